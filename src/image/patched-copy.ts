import { constants, promises as fsp } from "node:fs";
import { BmapBuilder, DEFAULT_BLOCK_SIZE, dataRuns, type Bmap, type DataRun } from "./bmap.js";
import { WorkerSha256 } from "./worker-sha256.js";

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
 * does the I/O), and the image's sha256 is computed on a thread of its own,
 * so the pass costs about its slowest part, not their sum.
 */
async function onePass(
  input: fsp.FileHandle,
  output: fsp.FileHandle | undefined,
  patches: readonly ImagePatch[],
  signal?: AbortSignal,
): Promise<{ sha256: string; bmap: Bmap }> {
  const size = (await input.stat()).size;
  const hash = new WorkerSha256(CHUNK, 6);
  try {
    const bmap = await patchHashAndWrite(input, output, patches, size, hash, signal);
    return { sha256: await hash.digest(), bmap };
  } finally {
    await hash.close();
  }
}

async function patchHashAndWrite(
  input: fsp.FileHandle,
  output: fsp.FileHandle | undefined,
  patches: readonly ImagePatch[],
  size: number,
  hash: WorkerSha256,
  signal?: AbortSignal,
): Promise<Bmap> {
  const bmap = new BmapBuilder(size, DEFAULT_BLOCK_SIZE);
  // The hash's buffers in turn: one read ahead, one patched and mapped, one written behind, the rest with the hashing thread.
  const readAt = async (pos: number) => readChunk(input, await hash.take(), pos, Math.min(CHUNK, size - pos));
  let reading = size > 0 ? readAt(0) : undefined;
  let writing: Promise<void> = Promise.resolve();
  for (let pos = 0; pos < size; ) {
    signal?.throwIfAborted();
    const buf = await reading!;
    const want = buf.length;
    const next = pos + want;
    reading = next < size ? readAt(next) : undefined;
    // Awaited in the next round; a failure meanwhile must not count as unhandled.
    reading?.catch(() => undefined);
    applyPatches(buf, want, pos, patches);
    const runs = dataRuns(buf, want, DEFAULT_BLOCK_SIZE);
    bmap.feedRuns(buf, want, pos, runs);
    // In the image's order: the previous chunk goes to the hash once written.
    await writing;
    if (runs.length === 0) {
      hash.zeros(want);
      hash.giveBack(buf);
    } else if (output) {
      writing = writeRuns(output, buf, runs, pos).then(() => hash.hand(buf));
      writing.catch(() => undefined);
    } else {
      hash.hand(buf);
    }
    pos = next;
  }
  await writing;
  return bmap.finish();
}

/** `length` bytes at `pos` into `into` (a buffer of the hash's, not the one being mapped, written or hashed). */
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

/** Write the chunk's data runs (whole 4 KiB blocks that are not all zeros) at `pos`: the zero blocks stay holes. */
async function writeRuns(out: fsp.FileHandle, buf: Buffer, runs: readonly DataRun[], pos: number): Promise<void> {
  for (const { start, end } of runs) {
    for (let done = start; done < end; ) done += (await out.write(buf, done, end - done, pos + done)).bytesWritten;
  }
}
