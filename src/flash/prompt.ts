/** Questions on the terminal: which device, and whether to go ahead. */
import { createInterface } from "node:readline/promises";
import { PibakeError } from "../errors.js";

export interface PromptIO {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
}

/** "2" picks the second device; "q" or an empty line cancels; anything else is asked again. */
export function parseChoice(answer: string, count: number): number | "cancel" | undefined {
  const a = answer.trim().toLowerCase();
  if (a === "" || a === "q" || a === "quit") return "cancel";
  if (!/^\d+$/.test(a)) return undefined;
  const n = Number(a);
  return n >= 1 && n <= count ? n - 1 : undefined;
}

export function isYes(answer: string): boolean {
  return ["y", "yes"].includes(answer.trim().toLowerCase());
}

export interface Prompter {
  ask(question: string): Promise<string>;
  close(): void;
}

/**
 * One line reader for the whole conversation, so that answers typed (or
 * piped) ahead are not lost between questions.
 */
export function createPrompter(io: PromptIO, signal?: AbortSignal): Prompter {
  const rl = createInterface({ input: io.input, output: io.output, terminal: false });
  const lines: string[] = [];
  const waiting: { resolve: (l: string) => void; reject: (e: Error) => void }[] = [];
  let ended = false;
  rl.on("line", (line) => {
    const w = waiting.shift();
    if (w) w.resolve(line);
    else lines.push(line);
  });
  rl.on("close", () => {
    ended = true;
    for (const w of waiting.splice(0)) w.reject(new PibakeError("no answer (input closed): nothing was written"));
  });
  // Ctrl-C while waiting for an answer: stop asking, nothing has been written yet.
  signal?.addEventListener("abort", () => {
    const reason = signal.reason as Error;
    for (const w of waiting.splice(0)) w.reject(new PibakeError(`${reason.message}: nothing was written`, (reason as PibakeError).exitCode ?? 130));
  });
  return {
    ask(question) {
      io.output.write(question);
      const l = lines.shift();
      if (l !== undefined) return Promise.resolve(l);
      if (ended) return Promise.reject(new PibakeError("no answer (input closed): nothing was written"));
      if (signal?.aborted) return Promise.reject(signal.reason);
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    close: () => rl.close(),
  };
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
