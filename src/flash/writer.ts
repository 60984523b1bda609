/**
 * The part of `pibake flash` that touches the target: open it (exclusively,
 * bypassing the page cache where the platform allows), write image data at
 * its offsets with a few large writes in flight, read it back to verify, and
 * hand the card back to the kernel.
 */
import { createHash, type Hash } from "node:crypto";
import { constants as C, promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import type { Readable } from "node:stream";
import { PibakeError } from "../errors.js";
import type { ByteRange } from "../image/bmap.js";
import { formatBytes } from "../ui/output.js";
import { runCommand } from "../host/process.js";
import { flushBuffers, rereadPartitionTable, updatePartitions } from "./commands.js";

export const CHUNK_SIZE = 4 << 20;
/** Writes in flight. libuv has four threads by default and the reader needs one. */
export const WRITE_DEPTH = 3;
/** O_DIRECT wants offsets, lengths and memory aligned to the logical block size; 4096 covers all. */
const ALIGN = 4096;

/**
 * Page-aligned buffers. Node's Buffers carry no alignment guarantee, but a
 * WebAssembly memory starts on a page boundary, which O_DIRECT requires.
 */
export function alignedBuffers(count: number, size: number): Buffer[] {
  const pages = Math.ceil((count * size) / 65536);
  const mem = new WebAssembly.Memory({ initial: pages, maximum: pages });
  const all = Buffer.from(mem.buffer);
  return Array.from({ length: count }, (_, i) => all.subarray(i * size, (i + 1) * size));
}

class BufferPool {
  private free: Buffer[];
  private waiting: ((b: Buffer) => void)[] = [];
  constructor(count: number, size: number) {
    this.free = alignedBuffers(count, size);
  }
  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    return b ? Promise.resolve(b) : new Promise((resolve) => this.waiting.push(resolve));
  }
  release(b: Buffer): void {
    const w = this.waiting.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}

export type TargetKind = "block" | "file";

export interface TargetHandle {
  path: string;
  kind: TargetKind;
  /** The handle opened first; for a block device it holds the exclusive claim. */
  fh: FileHandle;
  /** Whether fh was opened with O_DIRECT. */
  fhDirect: boolean;
  /** Whether aligned I/O still goes around the cache (false after the device refused it). */
  direct: boolean;
  /** A cached handle for what O_DIRECT cannot take (an unaligned tail), opened on demand. */
  buffered?: Promise<FileHandle>;
}

function openError(file: string, err: NodeJS.ErrnoException): PibakeError {
  switch (err.code) {
    case "EBUSY":
      return new PibakeError(`${file} is busy (mounted, or held by another program): unmount it, or pass --unmount if it has mounted partitions`);
    case "EACCES":
    case "EPERM":
      return new PibakeError(`cannot open ${file} for writing (permission denied): run pibake flash as root, e.g. with sudo`);
    case "EROFS":
      return new PibakeError(`${file} is read-only: if it is an SD card, slide its lock switch to unlocked`);
    case "ENOMEDIUM":
      return new PibakeError(`${file} has no medium: insert the card`);
    case "ENOENT":
    case "ENXIO":
      return new PibakeError(`${file} does not exist (was the card removed?)`);
    default:
      return new PibakeError(`cannot open ${file}: ${err.message}`);
  }
}

/**
 * Open the target for writing and reading back. A block device is opened
 * with O_EXCL, which the kernel refuses while any partition of it is
 * mounted: a last guard behind the checks. A regular file is emptied, so that
 * ranges a bmap skips read as zeros.
 */
export async function openTarget(file: string, kind: TargetKind): Promise<TargetHandle> {
  const base = kind === "block" ? C.O_RDWR | C.O_EXCL : C.O_RDWR | C.O_CREAT;
  const tryOpen = (flags: number) => fsp.open(file, flags, 0o644);
  let fh: FileHandle;
  let direct = true;
  try {
    fh = await tryOpen(base | C.O_DIRECT);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== "EINVAL") throw openError(file, e);
    // tmpfs and some other filesystems have no O_DIRECT.
    direct = false;
    try {
      fh = await tryOpen(base);
    } catch (err2) {
      throw openError(file, err2 as NodeJS.ErrnoException);
    }
  }
  if (kind === "file") await fh.truncate(0);
  return { path: file, kind, fh, fhDirect: direct, direct };
}

function bufferedHandle(t: TargetHandle): Promise<FileHandle> {
  if (!t.fhDirect) return Promise.resolve(t.fh);
  // The exclusive claim is held by t.fh; a second, shared open is allowed.
  t.buffered ??= fsp.open(t.path, C.O_RDWR);
  return t.buffered;
}

export async function closeTarget(t: TargetHandle): Promise<void> {
  const b = t.buffered;
  delete t.buffered;
  await (await b?.catch(() => undefined))?.close();
  await t.fh.close();
}

/** Flush everything to the medium: data written around the cache and through it. */
export async function syncTarget(t: TargetHandle): Promise<void> {
  try {
    await (await t.buffered)?.sync();
    await t.fh.sync();
  } catch (err) {
    throw new PibakeError(`flushing ${t.path} failed: ${(err as Error).message}; the card is incomplete`);
  }
}

function writeError(t: TargetHandle, offset: number, err: NodeJS.ErrnoException): PibakeError {
  if (err.code === "ENOSPC" || err.code === "EFBIG") {
    return new PibakeError(`${t.path} is full at ${formatBytes(offset)} (${offset}): it is smaller than the image; the card is incomplete`);
  }
  if (err.code === "EIO") {
    return new PibakeError(`I/O error writing ${t.path} at byte ${offset}: the card may be faulty or was removed; the card is incomplete`);
  }
  return new PibakeError(`writing ${t.path} failed at byte ${offset}: ${err.message}; the card is incomplete`);
}

async function writeAt(t: TargetHandle, buf: Buffer, len: number, offset: number): Promise<void> {
  let done = 0;
  while (done < len) {
    const aligned = (offset + done) % ALIGN === 0 && (len - done) % ALIGN === 0;
    const fh = t.direct && aligned ? t.fh : await bufferedHandle(t);
    let n: number;
    try {
      n = (await fh.write(buf, done, len - done, offset + done)).bytesWritten;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === "EINVAL" && fh === t.fh && t.fhDirect) {
        // The device wants larger alignment than we give, or no O_DIRECT at all: go through the cache.
        t.direct = false;
        continue;
      }
      throw writeError(t, offset + done, e);
    }
    if (n === 0) throw writeError(t, offset + done, Object.assign(new Error("no space"), { code: "ENOSPC" }));
    done += n;
  }
}

/** A stretch of the target whose digest verification compares. */
export interface Segment {
  start: number;
  end: number;
  /** Hex digest of the image's bytes, when hashing was asked for. */
  digest?: string;
  /** How a mismatch names it: "blocks 1024-2047 of the bmap" or a byte range. */
  label: string;
}

export type ImageSource = { kind: "file"; path: string } | { kind: "stream"; stream: Readable };

export interface WriteOptions {
  source: ImageSource;
  target: TargetHandle;
  /** Mapped ranges from a bmap, sorted; without them the whole image is written. */
  ranges?: ByteRange[];
  /** Block size of the bmap, for naming ranges in messages. */
  blockSize?: number;
  /** The image size when known (from the bmap or the container); checked against what the source delivers. */
  imageSize?: number;
  /** Compute digests for verification, and check the bmap's own. */
  hash: boolean;
  checksumType?: string;
  signal?: AbortSignal;
  /** Bytes written so far, after each completed write. */
  onProgress?: (written: number) => void;
  chunkSize?: number;
  depth?: number;
}

export interface WriteResult {
  /** Bytes written to the target. */
  written: number;
  /** Size of the image as read. */
  imageSize: number;
  segments: Segment[];
  direct: boolean;
}

function byteLabel(start: number, end: number): string {
  return `bytes ${start}-${end - 1} (${formatBytes(start)} to ${formatBytes(end)})`;
}

function rangeLabel(r: ByteRange, blockSize: number): string {
  const first = r.start / blockSize;
  const last = Math.ceil(r.end / blockSize) - 1;
  return `bmap range ${first === last ? first : `${first}-${last}`}, ${byteLabel(r.start, r.end)}`;
}

/**
 * Write the image to the target: only the mapped ranges with a bmap, all of
 * it without. Chunks are hashed in order (for verification) while up to
 * `depth` writes run.
 */
export async function writeImage(o: WriteOptions): Promise<WriteResult> {
  const chunkSize = o.chunkSize ?? CHUNK_SIZE;
  const depth = o.depth ?? WRITE_DEPTH;
  const pool = new BufferPool(depth + 2, chunkSize);
  const segments: Segment[] = [];
  const hashChunk = segmentHasher(o, segments);
  const writes: Writes = { inflight: new Set(), failure: undefined, written: 0 };
  const emit: Emit = async (buf, len, offset, range) => {
    if (writes.failure) throw writes.failure;
    o.signal?.throwIfAborted();
    hashChunk(buf, len, offset, range);
    await startWrite(o, writes, depth, pool, buf, len, offset);
  };

  let imageSize: number;
  try {
    imageSize =
      o.source.kind === "file"
        ? await produceFromFile(o.source.path, o, chunkSize, pool, emit)
        : await produceFromStream(o.source.stream, o, chunkSize, pool, emit);
  } finally {
    // Never leave a write running against a handle that is about to close.
    await Promise.allSettled([...writes.inflight]);
  }
  if (writes.failure) throw writes.failure;
  if (o.imageSize !== undefined && imageSize !== o.imageSize) {
    throw new PibakeError(
      `the image holds ${imageSize} bytes where ${o.imageSize} were expected: it is truncated or does not match its bmap; the card is incomplete`,
    );
  }
  if (o.target.kind === "file") await o.target.fh.truncate(imageSize);
  return { written: writes.written, imageSize, segments, direct: o.target.direct };
}

/** The writes under way, at most `depth` at once: the first failure is kept and stops the rest. */
interface Writes {
  readonly inflight: Set<Promise<void>>;
  failure: unknown;
  /** Bytes written, counted as each write completes. */
  written: number;
}

/** A chunk's write, started once fewer than `depth` are under way; its buffer goes back to the pool when it ends. */
async function startWrite(o: WriteOptions, writes: Writes, depth: number, pool: BufferPool, buf: Buffer, len: number, offset: number): Promise<void> {
  const { inflight } = writes;
  while (inflight.size >= depth) await Promise.race(inflight);
  if (writes.failure) throw writes.failure;
  const p: Promise<void> = writeAt(o.target, buf, len, offset)
    .then(
      () => {
        writes.written += len;
        o.onProgress?.(writes.written);
      },
      (err: unknown) => {
        writes.failure ??= err;
      },
    )
    .finally(() => {
      inflight.delete(p);
      pool.release(buf);
    });
  inflight.add(p);
}

/** Hash each chunk, in order, into its segment; a bmap range's digest must be the bmap's own. */
function segmentHasher(o: WriteOptions, segments: Segment[]): (buf: Buffer, len: number, offset: number, range?: ByteRange) => void {
  const checksumType = o.checksumType ?? "sha256";
  const blockSize = o.blockSize ?? 4096;
  // Whole-image segments follow the chunks; bmap segments are the bmap's ranges.
  let seg: { s: Segment; hash?: Hash; expect?: string } | undefined;
  return (buf, len, offset, range) => {
    if (!seg || offset >= seg.s.end) {
      const start = range ? range.start : offset;
      const end = range ? range.end : offset + len;
      seg = { s: { start, end, label: range ? rangeLabel(range, blockSize) : byteLabel(start, end) } };
      if (o.hash) seg.hash = createHash(checksumType);
      if (range?.checksum) seg.expect = range.checksum;
      segments.push(seg.s);
    }
    seg.hash?.update(buf.subarray(0, len));
    if (offset + len >= seg.s.end && seg.hash) {
      seg.s.digest = seg.hash.digest("hex");
      if (seg.expect && seg.expect !== seg.s.digest) {
        throw new PibakeError(
          `the image does not match its bmap in ${seg.s.label}: the .bmap belongs to another image (pass --no-bmap to write the whole image); the card is incomplete`,
        );
      }
    }
  };
}

type Emit = (buf: Buffer, len: number, offset: number, range?: ByteRange) => Promise<void>;

/** An uncompressed image: read just the ranges needed, at their offsets. */
async function produceFromFile(file: string, o: WriteOptions, chunkSize: number, pool: BufferPool, emit: Emit): Promise<number> {
  const fh = await fsp.open(file, "r");
  try {
    const size = (await fh.stat()).size;
    const ranges = o.ranges ?? [{ start: 0, end: size }];
    for (const r of ranges) {
      if (r.end > size) {
        throw new PibakeError(`the image ${file} is ${size} bytes but its bmap maps up to byte ${r.end}: it is truncated or the bmap belongs to another image`);
      }
      for (let off = r.start; off < r.end; off += chunkSize) {
        o.signal?.throwIfAborted();
        const len = Math.min(chunkSize, r.end - off);
        const buf = await pool.acquire();
        let got = 0;
        while (got < len) {
          const { bytesRead } = await fh.read(buf, got, len - got, off + got);
          if (bytesRead === 0) throw new PibakeError(`the image ${file} ended early at byte ${off + got}`);
          got += bytesRead;
        }
        await emit(buf, len, off, o.ranges ? r : undefined);
      }
    }
    return size;
  } finally {
    await fh.close();
  }
}

/** A decompressed stream: copy the mapped parts into aligned chunks, skip the rest. */
async function produceFromStream(stream: Readable, o: WriteOptions, chunkSize: number, pool: BufferPool, emit: Emit): Promise<number> {
  const ranges: ByteRange[] = o.ranges ?? [{ start: 0, end: Number.POSITIVE_INFINITY }];
  let ri = 0;
  let pos = 0;
  let cur: { buf: Buffer; offset: number; fill: number } | undefined;
  for await (const data of stream as AsyncIterable<Buffer>) {
    o.signal?.throwIfAborted();
    let p = 0;
    while (p < data.length) {
      const r = ranges[ri];
      if (!r) {
        pos += data.length - p; // Past the last mapped range: only the size matters now.
        break;
      }
      if (pos < r.start) {
        const skip = Math.min(r.start - pos, data.length - p);
        pos += skip;
        p += skip;
        continue;
      }
      cur ??= { buf: await pool.acquire(), offset: pos, fill: 0 };
      const chunkEnd = Math.min(r.end, cur.offset + chunkSize);
      const n = Math.min(chunkEnd - pos, data.length - p);
      data.copy(cur.buf, cur.fill, p, p + n);
      cur.fill += n;
      pos += n;
      p += n;
      if (pos === chunkEnd) {
        const c = cur;
        cur = undefined;
        if (pos === r.end) ri++;
        await emit(c.buf, c.fill, c.offset, o.ranges ? r : undefined);
      }
    }
  }
  if (cur) {
    if (o.ranges) {
      throw new PibakeError(`the image ended at byte ${pos}, inside a range its bmap maps: it is truncated or the bmap belongs to another image`);
    }
    await emit(cur.buf, cur.fill, cur.offset);
  }
  if (o.ranges && ri < ranges.length) {
    throw new PibakeError(
      `the image ended at byte ${pos} but its bmap maps data up to byte ${ranges[ranges.length - 1]!.end}: it is truncated or the bmap belongs to another image`,
    );
  }
  return pos;
}

export class VerifyError extends PibakeError {
  constructor(
    readonly target: string,
    readonly segment: Segment,
  ) {
    super(
      `verification failed: ${target} differs from the image in ${segment.label}; ` +
        `the card does not hold a faithful copy: flash it again, and if this repeats, use another card`,
    );
    this.name = "VerifyError";
  }
}

export interface VerifyOptions {
  checksumType?: string;
  signal?: AbortSignal;
  onProgress?: (verified: number) => void;
  chunkSize?: number;
  depth?: number;
}

/**
 * Read the segments back and compare their digests with the image's. Reads
 * bypass the cache when the target was opened that way, so they see the
 * medium, not what we just handed to the kernel.
 */
export async function verifyTarget(t: TargetHandle, segments: Segment[], o: VerifyOptions = {}): Promise<void> {
  const chunkSize = o.chunkSize ?? CHUNK_SIZE;
  const depth = o.depth ?? WRITE_DEPTH;
  const checksumType = o.checksumType ?? "sha256";
  const pool = new BufferPool(depth + 1, chunkSize);
  let verified = 0;

  const gen = verifyPieces(segments, chunkSize);
  const queue: Promise<ReadBack>[] = [];
  const refill = () => {
    while (queue.length < depth) {
      const next = gen.next();
      if (next.done) return;
      const q = readBack(t, pool, next.value);
      q.catch(() => {}); // Observed when its turn comes; avoid an unhandled rejection meanwhile.
      queue.push(q);
    }
  };
  let hash: Hash | undefined;
  try {
    refill();
    while (queue.length > 0) {
      o.signal?.throwIfAborted();
      const { p, buf, got } = await queue.shift()!;
      const s = segments[p.si]!;
      hash ??= createHash(checksumType);
      hash.update(buf.subarray(0, got));
      pool.release(buf);
      if (got < p.len) throw new VerifyError(t.path, s);
      verified += p.len;
      o.onProgress?.(verified);
      if (p.last) {
        const digest = hash.digest("hex");
        hash = undefined;
        if (digest !== s.digest) throw new VerifyError(t.path, s);
      }
      refill();
    }
  } finally {
    await Promise.allSettled(queue);
  }
}

/** A chunk of segment `si` to read back; the last one of a segment closes its digest. */
interface VerifyPiece {
  si: number;
  offset: number;
  len: number;
  last: boolean;
}

/** What was read back for a piece: `got` short of its length means the target ended early. */
interface ReadBack {
  p: VerifyPiece;
  buf: Buffer;
  got: number;
}

/** The segments cut into chunks, in order. */
function* verifyPieces(segments: Segment[], chunkSize: number): Generator<VerifyPiece> {
  for (let si = 0; si < segments.length; si++) {
    const s = segments[si]!;
    if (s.digest === undefined) throw new Error(`segment ${s.label} has no digest to verify against`);
    for (let off = s.start; off < s.end; off += chunkSize) {
      const len = Math.min(chunkSize, s.end - off);
      yield { si, offset: off, len, last: off + len >= s.end };
    }
  }
}

/** One piece read back into a pooled buffer, from the medium where the target allows. */
async function readBack(t: TargetHandle, pool: BufferPool, p: VerifyPiece): Promise<ReadBack> {
  const buf = await pool.acquire();
  // O_DIRECT reads whole aligned blocks; the tail of an odd-sized image is read padded and cut.
  const want = t.direct && t.fhDirect ? Math.ceil(p.len / ALIGN) * ALIGN : p.len;
  let got = 0;
  try {
    while (got < p.len) {
      const fh = t.direct && t.fhDirect ? t.fh : await bufferedHandle(t);
      let n: number;
      try {
        n = (await fh.read(buf, got, want - got, p.offset + got)).bytesRead;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EINVAL" && t.direct && t.fhDirect) {
          // Fall back to cached reads, dropping what the cache holds so that they see the medium.
          t.direct = false;
          if (t.kind === "block") await flushDeviceCache(t.path);
          continue;
        }
        throw new PibakeError(`reading ${t.path} back failed at byte ${p.offset + got}: ${(err as Error).message}`);
      }
      if (n === 0) break;
      got += n;
    }
  } catch (err) {
    pool.release(buf);
    throw err;
  }
  return { p, buf, got: Math.min(got, p.len) };
}

/** Drop cached blocks of a device, so that reads after buffered writes come from the medium. */
export async function flushDeviceCache(device: string): Promise<void> {
  await runCommand(flushBuffers(device));
}

/**
 * Make the kernel see the new partition table. Loop devices without
 * partition scanning refuse BLKRRPART; partx updates them through BLKPG.
 * Returns a warning when neither worked.
 */
export async function rereadPartitions(device: string): Promise<string | undefined> {
  const r = await runCommand(rereadPartitionTable(device));
  if (r.exitCode === 0) return undefined;
  const p = await runCommand(updatePartitions(device));
  if (p.exitCode === 0) return undefined;
  // A loop device without partition scanning, holding an image without a table: nothing to tell the kernel.
  if (/^\/dev\/loop\d+$/.test(device)) return undefined;
  const why = r.output.trim() || `exit ${r.exitCode ?? r.signal}`;
  return `the kernel did not reread the partition table of ${device} (${why}): unplug the card and plug it in again before using it on this computer`;
}
