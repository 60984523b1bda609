import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { execa } from "execa";
import { PibakeError } from "../errors.js";

/**
 * A compressor (xz or zstd, all cores) fed through a pipe; its output goes to
 * `dest` and through a sha256 on the way, so the archive is never read back.
 */
export function startCompressor(kind: "xz" | "zstd", dest: string, size: number, signal?: AbortSignal) {
  const args = kind === "xz" ? ["-T0", "-c", "-z", "-"] : ["-T0", "-q", "-c", `--stream-size=${size}`, "-"];
  const child = execa(kind, args, { stdin: "pipe", stdout: "pipe", stderr: "pipe", buffer: { stdout: false, stderr: true }, reject: false, ...(signal ? { cancelSignal: signal } : {}) });
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
  child.stdin.on("error", (e: Error) => (broken = e));
  return {
    written: () => written,
    write: (chunk: Buffer) =>
      new Promise<void>((resolve, reject) => {
        if (broken) return reject(broken);
        child.stdin.write(chunk, (err) => (err ? reject(err) : resolve()));
      }),
    /** Close the input, wait for the compressor, and return the archive's sha256. */
    finish: async (): Promise<string> => {
      child.stdin.end();
      const r = await child;
      await fileDone.catch(() => undefined);
      if (r.isCanceled) throw signal?.reason ?? new PibakeError(`${kind} was cancelled`);
      if (r.exitCode !== 0) throw new PibakeError(`${kind} failed (exit ${r.exitCode ?? r.signal}): ${String(r.stderr ?? "").trim() || r.shortMessage}`);
      await fileDone;
      return hash.digest("hex");
    },
    abort: async () => {
      child.kill("SIGKILL");
      await child.catch(() => undefined);
      file.destroy();
    },
  };
}
