/**
 * pibake init's files: all or nothing, and never over an existing file. Each
 * is written in full under a temporary name, then linked to its own name
 * (link(2) fails when the name exists, so a file that appeared meanwhile is
 * not replaced, as rename(2) would) and the temporary name removed. Anything
 * that fails, or a Ctrl-C, takes back every file and the directory made.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, linkSync, mkdirSync, rmdirSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import type { CleanupScope } from "../cleanup.js";

export interface FileToWrite {
  /** Absolute. */
  file: string;
  data: string;
  mode: number;
}

/** A usage error (exit 2) for a file that exists: init never replaces one. */
export function existsError(file: string, what: string): PibakeError {
  return new PibakeError(`${file} already exists: pibake init does not replace ${what}; move it away or name another config (pibake init other.json)`, 2);
}

/** The first of these files that exists, if any. */
export function firstExisting(files: readonly string[]): string | undefined {
  return files.find((f) => existsSync(f));
}

/**
 * Write `files` (secrets first, the config last, so that a config never
 * refers to a secret that is not there) and `dir` (mode 0700) when missing.
 */
export function writeAll(files: readonly FileToWrite[], secretDir: string, scope: CleanupScope): void {
  const made: string[] = [];
  const temps: string[] = [];
  let dirMade = false;
  let done = false;
  scope.defer(() => {
    for (const t of temps) rmQuiet(t);
    if (done) return;
    for (const f of made.reverse()) rmQuiet(f);
    if (dirMade) rmdirSync(secretDir);
  }, "remove pibake init's unfinished files");

  if (files.some((f) => path.dirname(f.file) === secretDir)) {
    if (!existsSync(secretDir)) {
      mkdirSync(secretDir, { mode: 0o700 });
      dirMade = true;
      // mkdir's mode is narrowed by the umask, never widened: say it outright.
      chmodSync(secretDir, 0o700);
    } else if (!statSync(secretDir).isDirectory()) {
      throw new PibakeError(`${secretDir} exists and is not a directory: the secrets go there; move it away`, 2);
    }
  }
  for (const f of files) {
    const tmp = path.join(path.dirname(f.file), `.${path.basename(f.file)}.tmp-${randomBytes(4).toString("hex")}`);
    temps.push(tmp);
    writeFileSync(tmp, f.data, { mode: f.mode, flag: "wx" });
    chmodSync(tmp, f.mode);
  }
  scope.throwIfInterrupted();
  files.forEach((f, i) => {
    try {
      linkSync(temps[i]!, f.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") throw existsError(f.file, "a file");
      throw new PibakeError(`cannot write ${f.file}: ${(err as Error).message}`);
    }
    made.push(f.file);
  });
  done = true;
}

function rmQuiet(file: string): void {
  try {
    unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}
