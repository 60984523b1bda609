/** The questions of flash: which device. */
import { PibakeError } from "../errors.js";
import type { Prompter } from "../ui/prompt.js";

/** "2" picks the second device; "q" or an empty line cancels; anything else is asked again. */
export function parseChoice(answer: string, count: number): number | "cancel" | undefined {
  const a = answer.trim().toLowerCase();
  if (a === "" || a === "q" || a === "quit") return "cancel";
  if (!/^\d+$/.test(a)) return undefined;
  const n = Number(a);
  return n >= 1 && n <= count ? n - 1 : undefined;
}

/** Ask until the answer is a device number, or the user cancels. */
export async function chooseIndex(p: Prompter, out: NodeJS.WritableStream, count: number): Promise<number> {
  for (;;) {
    const choice = parseChoice(await p.ask(`Write to which device? [1-${count}, q to cancel] `), count);
    if (choice === "cancel") throw new PibakeError("cancelled: nothing was written");
    if (choice !== undefined) return choice;
    out.write(`Please answer a number from 1 to ${count}, or q.\n`);
  }
}
