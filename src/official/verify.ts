/** Digests of an image file: of the file itself, and of the image it decompresses to (never written out). */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { openImageReader } from "../image/compression.js";
import { abortReason } from "./http.js";
import { progressMeter, type ImageProgress } from "./progress.js";

export interface Measured {
  sha256: string;
  size: number;
}

export async function sha256File(
  file: string,
  opts: { signal?: AbortSignal | undefined; onProgress?: ((p: ImageProgress) => void) | undefined; fileName?: string; total?: number } = {},
): Promise<Measured> {
  const hash = createHash("sha256");
  const meter = progressMeter("check", opts.fileName ?? file, opts.total, opts.onProgress);
  let size = 0;
  try {
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20, ...(opts.signal ? { signal: opts.signal } : {}) })) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
      meter.update(size);
    }
  } catch (err) {
    throw abortReason(opts.signal, `checking ${file}`) ?? err;
  }
  meter.update(size, true);
  return { sha256: hash.digest("hex"), size };
}

/**
 * SHA-256 and size of the decompressed image, streamed through the same
 * reader the base engine uses (xz, gzip, zstd, zip), so what is checked is
 * what the build will read.
 */
export async function extractedDigest(
  file: string,
  opts: { signal?: AbortSignal | undefined; onProgress?: ((p: ImageProgress) => void) | undefined; fileName: string; total?: number | undefined },
): Promise<Measured> {
  const reader = await openImageReader(file);
  const hash = createHash("sha256");
  const meter = progressMeter("check", opts.fileName, opts.total ?? reader.size, opts.onProgress);
  let size = 0;
  const onAbort = () => void reader.close();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for await (const chunk of reader.stream) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
      meter.update(size);
    }
  } catch (err) {
    throw abortReason(opts.signal, `checking ${opts.fileName}`) ?? err;
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    await reader.close();
  }
  const stopped = abortReason(opts.signal, `checking ${opts.fileName}`);
  if (stopped) throw stopped;
  meter.update(size, true);
  return { sha256: hash.digest("hex"), size };
}
