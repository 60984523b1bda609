import { createHash } from "node:crypto";
import { constants, promises as fsp } from "node:fs";
import { BmapBuilder, DEFAULT_BLOCK_SIZE, type Bmap } from "./bmap.js";

/**
 * A copy of an image with some bytes changed (the fast path's edits, held in
 * memory), its sha256 and its bmap, in one pass and in-process: a reflink
 * where the file system has them (btrfs, XFS, APFS), the changes written
 * into it, then one read for the digests; otherwise one read of the source
 * that patches, hashes and writes only the blocks that are not all zeros,
 * leaving holes for the rest. Delivery then needs no second pass.
 */
export interface ImagePatch {
  /** Byte position in the image file. */
  pos: number;
  bytes: Buffer;
}

export interface PatchedCopy {
  method: "reflink" | "sparse";
  sha256: string;
  bmap: Bmap;
}

const CHUNK = 8 << 20;
const ZEROS = Buffer.alloc(CHUNK);

export async function writePatchedImage(src: string, dest: string, patches: readonly ImagePatch[], signal?: AbortSignal): Promise<PatchedCopy> {
  if (await reflink(src, dest)) {
    const out = await fsp.open(dest, "r+");
    try {
      for (const p of patches) await out.write(p.bytes, 0, p.bytes.length, p.pos);
      return { method: "reflink", ...(await onePass(out, undefined, [], signal)) };
    } finally {
      await out.close();
    }
  }
  const input = await fsp.open(src, "r");
  const output = await fsp.open(dest, "wx", 0o600);
  try {
    const digests = await onePass(input, output, patches, signal);
    await output.truncate((await input.stat()).size);
    return { method: "sparse", ...digests };
  } finally {
    await input.close();
    await output.close();
  }
}

async function reflink(src: string, dest: string): Promise<boolean> {
  try {
    // FICLONE_FORCE: never libuv's fallback, a byte-for-byte copy that fills the holes.
    await fsp.copyFile(src, dest, constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch {
    await fsp.rm(dest, { force: true });
    return false;
  }
}

/**
 * Read `input` once: patches laid over, every byte hashed, the bmap built,
 * and the data blocks written to `output` when given. The next chunk is read
 * and the previous one written while this one is hashed (the thread pool
 * does the I/O), so the pass costs about its slowest part, not their sum.
 */
async function onePass(input: fsp.FileHandle, output: fsp.FileHandle | undefined, patches: readonly ImagePatch[], signal?: AbortSignal): Promise<{ sha256: string; bmap: Bmap }> {
  const size = (await input.stat()).size;
  const hash = createHash("sha256");
  const bmap = new BmapBuilder(size, DEFAULT_BLOCK_SIZE);
  // Three buffers in turn: one read ahead, one hashed, one written behind.
  const ring = [0, 1, 2].map(() => Buffer.allocUnsafe(CHUNK));
  let turn = 0;
  let reading = size > 0 ? readChunk(input, ring[0]!, 0, Math.min(CHUNK, size)) : undefined;
  let writing: Promise<void> = Promise.resolve();
  for (let pos = 0; pos < size; ) {
    signal?.throwIfAborted();
    const want = Math.min(CHUNK, size - pos);
    const buf = await reading!;
    const next = pos + want;
    turn = (turn + 1) % ring.length;
    reading = next < size ? readChunk(input, ring[turn]!, next, Math.min(CHUNK, size - next)) : undefined;
    // Awaited in the next round; a failure meanwhile must not count as unhandled.
    reading?.catch(() => undefined);
    applyPatches(buf, want, pos, patches);
    hash.update(buf);
    bmap.feed(buf, want, pos);
    await writing;
    if (output) {
      writing = writeDataRuns(output, buf, want, pos);
      writing.catch(() => undefined);
    }
    pos = next;
  }
  await writing;
  return { sha256: hash.digest("hex"), bmap: bmap.finish() };
}

/** `length` bytes at `pos` into `into` (not the buffer being hashed, nor the one being written). */
async function readChunk(input: fsp.FileHandle, into: Buffer, pos: number, length: number): Promise<Buffer> {
  const buf = into.subarray(0, length);
  for (let got = 0; got < length; ) {
    const { bytesRead } = await input.read(buf, got, length - got, pos + got);
    if (bytesRead === 0) throw new Error("the image shrank while it was read");
    got += bytesRead;
  }
  return buf;
}

/** The patches that fall in `buf[0, n)`, which stands at `pos`, applied in order (a later one wins). */
function applyPatches(buf: Buffer, n: number, pos: number, patches: readonly ImagePatch[]): void {
  for (const p of patches) {
    const from = Math.max(pos, p.pos);
    const to = Math.min(pos + n, p.pos + p.bytes.length);
    if (from < to) p.bytes.copy(buf, from - pos, from - p.pos, to - p.pos);
  }
}

/** Write the runs of 4 KiB blocks of `buf[0, n)` that hold data, at `pos`; zero blocks are skipped (holes). */
async function writeDataRuns(out: fsp.FileHandle, buf: Buffer, n: number, pos: number): Promise<void> {
  if (buf.compare(ZEROS, 0, n, 0, n) === 0) return;
  const block = DEFAULT_BLOCK_SIZE;
  let start = -1;
  for (let off = 0; off <= n; off += block) {
    const end = Math.min(off + block, n);
    const zero = off >= n || buf.compare(ZEROS, 0, end - off, off, end) === 0;
    if (!zero && start < 0) start = off;
    if (start >= 0 && (zero || end === n)) {
      const stop = zero ? off : end;
      for (let done = start; done < stop; ) done += (await out.write(buf, done, stop - done, pos + done)).bytesWritten;
      start = -1;
    }
  }
}
