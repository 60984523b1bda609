import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { PibakeError } from "../errors.js";
import { startPiped } from "../host/process.js";
import { compress } from "./commands.js";

/**
 * A compressor (xz or zstd, all cores) fed through a pipe; its output goes to
 * `dest` and through a sha256 on the way, so the archive is never read back.
 */
export function startCompressor(kind: "xz" | "zstd", dest: string, size: number, signal?: AbortSignal) {
  const child = startPiped(compress(kind, size), { stdin: "pipe", signal });
  const stdin = child.stdin;
  const hash = createHash("sha256");
  const file = createWriteStream(dest, { mode: 0o644 });
  let written = 0;
  child.stdout.on("data", (c: Buffer) => {
    hash.update(c);
    written += c.length;
  });
  child.stdout.pipe(file);
  const fileDone = new Promise<void>((resolve, reject) => {
    file.on("finish", () => resolve());
    file.on("error", reject);
  });
  let broken: Error | undefined;
  stdin.on("error", (e: Error) => (broken = e));
  return {
    written: () => written,
    write: (chunk: Buffer) =>
      new Promise<void>((resolve, reject) => {
        if (broken) return reject(broken);
        stdin.write(chunk, (err) => (err ? reject(err) : resolve()));
      }),
    /** Close the input, wait for the compressor, and return the archive's sha256. */
    finish: async (): Promise<string> => {
      stdin.end();
      const r = await child.done;
      await fileDone.catch(() => undefined);
      if (r.canceled) throw signal?.reason ?? new PibakeError(`${kind} was cancelled`);
      if (r.exitCode !== 0) throw new PibakeError(`${kind} failed (exit ${r.exitCode ?? r.signal}): ${r.stderr.trim() || r.message}`);
      await fileDone;
      return hash.digest("hex");
    },
    abort: async () => {
      child.kill("SIGKILL");
      await child.done;
      file.destroy();
    },
  };
}
