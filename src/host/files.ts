import { randomBytes } from "node:crypto";
import { promises as fsp, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";

/**
 * Files written so that a reader, or a Ctrl-C, sees the old file or the whole
 * new one, never a part: written to a temporary name beside the target (same
 * file system, so the rename is atomic) and renamed over it.
 */
function tempBeside(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${randomBytes(4).toString("hex")}`);
}

/** Synchronous, for small files (keys, certificates, records); a failure is a user-facing error naming the file. */
export function writeFileAtomicSync(file: string, data: string | Buffer, mode = 0o644): void {
  const tmp = tempBeside(file);
  try {
    writeFileSync(tmp, data, { mode });
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new PibakeError(`cannot write ${file}: ${(err as Error).message}`);
  }
}

/** Asynchronous and flushed to the disk before the rename, for files delivered beside an image. */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const tmp = tempBeside(file);
  try {
    const fh = await fsp.open(tmp, "w", mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}
