/** Questions on the terminal, answered a line at a time: whether to go ahead (flash, push); flash/prompt.ts asks which device. */
import { createInterface } from "node:readline/promises";
import { PibakeError } from "../errors.js";

export interface PromptIO {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
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
