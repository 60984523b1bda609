import { promises as fsp } from "node:fs";
import path from "node:path";
import { PibakeError } from "../../errors.js";
import { openImageReader, probeImage, type Compression } from "../../image/compression.js";
import { formatBytes } from "../../ui/output.js";
import { sha256Sparse } from "../../image/sparse.js";
import type { BuildLog } from "../../host/log.js";
import { runCommand } from "../../host/process.js";
import { sparseCopy } from "../../image/commands.js";

/**
 * The working copy of the base image: decompressed as a stream into a sparse
 * file (runs of zeros become holes, never written), or, for a raw image, a
 * reflink or sparse copy (cp --reflink=auto --sparse=always): a regeneration
 * from pibake's own image does not copy gigabytes of free space.
 */
export interface PreparedBase {
  compression: Compression;
  /** The raw image's size. */
  size: number;
  /** sha256 of the base file as given (compressed or not), computed in the background: await it when needed. */
  sha256: Promise<string>;
  method: "decompressed" | "copied";
}

export interface PrepareOptions {
  log?: BuildLog;
  signal?: AbortSignal;
  /** Progress: bytes of raw image written so far, and the total when known. */
  onProgress?: (done: number, total: number | undefined) => void;
  /** A raw base is copied (sparse, or a reflink) rather than decompressed. */
  onCopy?: (size: number) => void;
}

const BLOCK = 4096;
const CHUNK = 1 << 20;

export async function prepareBase(base: string, dest: string, opts: PrepareOptions = {}): Promise<PreparedBase> {
  const info = await probeImage(base);
  opts.log?.line(`base ${base}: ${info.compression}${info.size !== undefined ? `, ${info.size} bytes raw` : ""}`);
  // The digest is read in the background (a second core and the page cache make it nearly free):
  // the build awaits it only for the manifest.
  const digest = sha256Sparse(base, opts.signal);
  digest.catch(() => undefined);
  let size: number;
  let method: PreparedBase["method"];
  if (info.compression === "none") {
    opts.onCopy?.(info.size ?? 0);
    await runCommand(sparseCopy(base, dest, `copying the base image ${path.basename(base)}`), {
      ...(opts.log ? { log: opts.log } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    size = (await fsp.stat(dest)).size;
    method = "copied";
  } else {
    size = await decompressSparse(base, dest, info.size ?? info.sizeHint, opts);
    if (info.size !== undefined && size !== info.size) {
      throw new PibakeError(
        `${base}: decompressed to ${size} bytes but the archive says ${info.size}: the download is damaged (check its sha256 and download it again)`,
      );
    }
    method = "decompressed";
  }
  return { compression: info.compression, size, sha256: digest, method };
}

async function decompressSparse(base: string, dest: string, total: number | undefined, opts: PrepareOptions): Promise<number> {
  const reader = await openImageReader(base);
  const fh = await fsp.open(dest, "w", 0o600);
  const onAbort = () => void reader.close();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  const buf = Buffer.alloc(CHUNK);
  const zeros = Buffer.alloc(CHUNK);
  let fill = 0;
  let pos = 0;
  const flush = async () => {
    if (fill === 0) return;
    if (buf.compare(zeros, 0, fill, 0, fill) !== 0) {
      // Write each run of non-zero blocks; zero blocks stay holes.
      let run = -1;
      for (let s = 0; s <= fill; s += BLOCK) {
        const e = Math.min(s + BLOCK, fill);
        const zero = s >= fill || buf.compare(zeros, 0, e - s, s, e) === 0;
        if (!zero && run < 0) run = s;
        if ((zero || e === fill) && run >= 0) {
          const end = zero ? s : e;
          await writeAll(fh, buf, run, end - run, pos + run);
          run = -1;
        }
      }
    }
    pos += fill;
    fill = 0;
    opts.onProgress?.(pos, total);
  };
  try {
    for await (const chunk of reader.stream as AsyncIterable<Buffer>) {
      if (opts.signal?.aborted) break;
      let off = 0;
      while (off < chunk.length) {
        const n = Math.min(CHUNK - fill, chunk.length - off);
        chunk.copy(buf, fill, off, off + n);
        fill += n;
        off += n;
        if (fill === CHUNK) await flush();
      }
    }
    opts.signal?.throwIfAborted();
    await flush();
    await fh.truncate(pos);
    return pos;
  } catch (err) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    if (err instanceof PibakeError) throw err;
    throw new PibakeError(`cannot decompress ${base}: ${(err as Error).message}`);
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    await reader.close();
    await fh.close();
  }
}

async function writeAll(fh: fsp.FileHandle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(buf, offset + done, length - done, position + done);
    done += bytesWritten;
  }
}

export function describeProgress(name: string, done: number, total: number | undefined, startedAt: number, verb = "decompressing"): string {
  const secs = (Date.now() - startedAt) / 1000;
  const rate = secs > 0.5 ? `, ${formatBytes(done / secs)}/s` : "";
  return total
    ? `${verb} ${name}: ${formatBytes(done)} of ${formatBytes(total)} (${Math.floor((done * 100) / total)}%${rate})`
    : `${verb} ${name}: ${formatBytes(done)}${rate}`;
}
