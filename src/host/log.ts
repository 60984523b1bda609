import { appendFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { redact } from "./redact.js";

/**
 * The build's full log (delivered beside the image). Every line goes through
 * the same redaction as the terminal, so that no secret value reaches it even
 * if a tool printed one. Appends synchronously: the command, the engine and
 * the tools' output interleave in the order they happened.
 */
export class BuildLog {
  constructor(readonly file: string) {
    mkdirSync(path.dirname(file), { recursive: true });
    appendFileSync(file, "", { mode: 0o600 });
  }

  line(text: string): void {
    const stamp = new Date().toISOString().slice(11, 19);
    const body = redact(text).replace(/\r/g, "");
    try {
      appendFileSync(
        this.file,
        body
          .split("\n")
          .map((l) => `${stamp} ${l}`)
          .join("\n") + "\n",
      );
    } catch {
      // The log is best effort: a full disk shows up elsewhere with a clearer message.
    }
  }

  /** A command about to run, as the log shows it. */
  command(cmd: string, args: readonly string[]): void {
    this.line(`$ ${[cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(" ")}`);
  }
}
