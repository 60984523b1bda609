import { constants, promises as fsp } from "node:fs";

/**
 * A copy of an image file that costs what its data costs: a reflink where
 * the file system has them (btrfs, XFS, APFS: instant, shares every block),
 * otherwise a copy in-process that reads the image once and writes only the
 * blocks that are not all zeros, leaving holes for the rest. No external
 * program: it runs wherever Node does.
 */
export type SparseCopyMethod = "reflink" | "sparse";

const BLOCK = 4096;
const CHUNK = 8 << 20;
const ZEROS = Buffer.alloc(CHUNK);

export async function copySparse(src: string, dest: string, signal?: AbortSignal): Promise<SparseCopyMethod> {
  try {
    // FICLONE_FORCE: never fall back to libuv's byte-for-byte copy, which fills the holes.
    await fsp.copyFile(src, dest, constants.COPYFILE_FICLONE_FORCE);
    return "reflink";
  } catch {
    await fsp.rm(dest, { force: true });
  }
  await copyDataBlocks(src, dest, signal);
  return "sparse";
}

async function copyDataBlocks(src: string, dest: string, signal?: AbortSignal): Promise<void> {
  const input = await fsp.open(src, "r");
  const output = await fsp.open(dest, "wx", 0o600);
  try {
    const size = (await input.stat()).size;
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; pos < size; ) {
      signal?.throwIfAborted();
      const { bytesRead } = await input.read(buf, 0, Math.min(CHUNK, size - pos), pos);
      if (bytesRead === 0) throw new Error(`${src} shrank while it was copied`);
      await writeDataRuns(output, buf, bytesRead, pos);
      pos += bytesRead;
    }
    await output.truncate(size);
  } finally {
    await input.close();
    await output.close();
  }
}

/** Write the runs of blocks of `buf[0, n)` that hold data at `pos`; zero blocks are skipped (holes). */
async function writeDataRuns(out: fsp.FileHandle, buf: Buffer, n: number, pos: number): Promise<void> {
  if (buf.compare(ZEROS, 0, n, 0, n) === 0) return;
  let start = -1;
  for (let off = 0; off <= n; off += BLOCK) {
    const end = Math.min(off + BLOCK, n);
    const zero = off >= n || buf.compare(ZEROS, 0, end - off, off, end) === 0;
    if (!zero && start < 0) start = off;
    if (start >= 0 && (zero || end === n)) {
      const stop = zero ? off : end;
      for (let done = start; done < stop; ) done += (await out.write(buf, done, stop - done, pos + done)).bytesWritten;
      start = -1;
    }
  }
}
