import { promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { PibakeError } from "../errors.js";
import { BmapBuilder, DEFAULT_BLOCK_SIZE, type Bmap } from "./bmap.js";
import { runCommand } from "../host/process.js";
import { mapExtents } from "./commands.js";
import { WorkerSha256 } from "./worker-sha256.js";

// Sparse images.
//
// An image is mostly free space, which the build leaves as holes in the file.
// Reading a hole is not free: the kernel fills a page-cache page with zeros for
// every 4 KiB (measured here: 24 s for the first read of a 2.4 GiB hole, on a
// busy 2-core VM). So the image is scanned once, reading only the extents that
// hold data (FIEMAP, through e2fsprogs' filefrag) and feeding zeros from memory
// for the holes: the bmap, the image's sha256 and the compressor's input all
// come from that one pass.

/** A byte range [start, end) of a file. */
export interface DataRange {
  start: number;
  end: number;
}

/**
 * The data extents in `filefrag -e` output (unwritten extents read as zeros and
 * count as holes), merged, in bytes. Undefined when the output is not understood.
 */
export function parseFilefrag(text: string, fileSize: number): DataRange[] | undefined {
  const bs = /\(\d+ blocks? of (\d+) bytes\)/.exec(text);
  if (!bs) return undefined;
  const blockSize = Number(bs[1]);
  const out: DataRange[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*\d+\.\.\s*\d+:\s*(\d+):\s*(\d*):?\s*(.*)$/.exec(line);
    if (!m) continue;
    if (/\bunwritten\b/.test(m[5]!)) continue;
    const start = Number(m[1]) * blockSize;
    const end = Math.min((Number(m[2]) + 1) * blockSize, fileSize);
    if (end <= start) continue;
    const last = out[out.length - 1];
    if (last && start <= last.end) last.end = Math.max(last.end, end);
    else out.push({ start, end });
  }
  return out.sort((a, b) => a.start - b.start);
}

/** Where `file` holds data; the whole file when the file system cannot say (then nothing is skipped, and all is still right). */
export async function dataRanges(file: string, size: number): Promise<DataRange[]> {
  const whole = size > 0 ? [{ start: 0, end: size }] : [];
  const r = await runCommand(mapExtents(file));
  if (r.exitCode !== 0) return whole;
  return parseFilefrag(String(r.stdout), size) ?? whole;
}

const SCAN_CHUNK = 4 << 20;
const ZEROS = Buffer.alloc(SCAN_CHUNK);

export interface ScanResult {
  bmap: Bmap;
  /** sha256 of the whole image, holes included. */
  sha256: string;
}

export interface ScanOptions {
  blockSize?: number;
  signal?: AbortSignal;
  /** Every byte of the image, in order (holes as zeros): for a compressor. Awaited, so it may apply back-pressure. */
  sink?: (chunk: Buffer) => Promise<void>;
  /** Bytes scanned so far. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * One pass over an image: its bmap (every block that is not all zeros, with a
 * sha256 per range, exactly as createBmap makes it), its sha256, and optionally
 * every byte to a sink. Holes are never read.
 */
export async function scanImage(file: string, opts: ScanOptions = {}): Promise<ScanResult> {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  const fh = await fsp.open(file, "r");
  // The whole image's sha256 on a thread of its own, beside the reads and the bmap's range hashes.
  const fileHash = new WorkerSha256(SCAN_CHUNK);
  try {
    const size = (await fh.stat()).size;
    const ranges = await dataRanges(file, size);
    const s: Scan = { file, fh, opts, size, fileHash, builder: new BmapBuilder(size, blockSize), pos: 0 };
    for (const r of ranges) {
      // Extents are file-system blocks; the bmap's blocks may be larger: widen to its boundaries.
      const start = Math.max(s.pos, Math.floor(r.start / blockSize) * blockSize);
      const end = Math.min(size, Math.ceil(r.end / blockSize) * blockSize);
      if (end <= start) continue;
      await scanZerosTo(s, start);
      await scanDataTo(s, end);
    }
    await scanZerosTo(s, size);
    const bmap = s.builder.finish();
    return { bmap, sha256: await fileHash.digest() };
  } finally {
    await fileHash.close();
    await fh.close();
  }
}

/** One pass under way: where it is, and what takes each chunk (the file's hash, the bmap, the sink). */
interface Scan {
  readonly file: string;
  readonly fh: FileHandle;
  readonly opts: ScanOptions;
  readonly size: number;
  readonly fileHash: WorkerSha256;
  readonly builder: BmapBuilder;
  /** Bytes scanned so far: the offset of the next chunk. */
  pos: number;
}

/** A hole up to `end`: zeros for the hash and the sink, never read. */
async function scanZerosTo(s: Scan, end: number): Promise<void> {
  if (end <= s.pos) return;
  // A hole ends any mapped range (pos is on a block boundary here).
  s.builder.gap(s.pos);
  while (s.pos < end) {
    s.opts.signal?.throwIfAborted();
    const n = Math.min(SCAN_CHUNK, end - s.pos);
    const z = ZEROS.subarray(0, n);
    s.fileHash.zeros(n);
    if (s.opts.sink) await s.opts.sink(z);
    s.pos += n;
    s.opts.onProgress?.(s.pos, s.size);
  }
}

/** Data up to `end`, read in chunks, each to the hash, the bmap and the sink. */
async function scanDataTo(s: Scan, end: number): Promise<void> {
  while (s.pos < end) {
    s.opts.signal?.throwIfAborted();
    const want = Math.min(SCAN_CHUNK, end - s.pos);
    // A fresh buffer per chunk: the sink may still hold the previous one.
    const buf = Buffer.allocUnsafe(want);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await s.fh.read(buf, got, want - got, s.pos + got);
      if (bytesRead === 0) throw new PibakeError(`${s.file} shrank while it was being read`);
      got += bytesRead;
    }
    await s.fileHash.update(buf);
    s.builder.feed(buf, want, s.pos);
    if (s.opts.sink) await s.opts.sink(buf);
    s.pos += want;
    s.opts.onProgress?.(s.pos, s.size);
  }
}

/** sha256 of a file, holes hashed from memory rather than read. */
export async function sha256Sparse(file: string, signal?: AbortSignal): Promise<string> {
  return (await scanImage(file, signal ? { signal } : {})).sha256;
}
