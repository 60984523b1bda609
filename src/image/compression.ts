/**
 * Compressed images: recognise them by their first bytes, and read them as a
 * stream of raw image bytes (never a temporary copy).
 */
import { createReadStream, promises as fsp } from "node:fs";
import path from "node:path";
import { PassThrough, pipeline, Transform, type Readable } from "node:stream";
import zlib from "node:zlib";
import yauzl from "yauzl";
import { PibakeError } from "../errors.js";
import { runCommand, startPiped, type Command } from "../host/process.js";
import { decompress, listXz, listZstd } from "./commands.js";

export type Compression = "none" | "gzip" | "xz" | "zstd" | "zip";

const MAGIC: { kind: Exclude<Compression, "none">; bytes: number[] }[] = [
  { kind: "xz", bytes: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00] },
  { kind: "zstd", bytes: [0x28, 0xb5, 0x2f, 0xfd] },
  { kind: "gzip", bytes: [0x1f, 0x8b] },
  { kind: "zip", bytes: [0x50, 0x4b, 0x03, 0x04] },
];

const EXTENSIONS: Record<string, Exclude<Compression, "none">> = {
  ".xz": "xz",
  ".zst": "zstd",
  ".zstd": "zstd",
  ".gz": "gzip",
  ".zip": "zip",
};

export function compressionOfMagic(head: Uint8Array): Compression {
  for (const { kind, bytes } of MAGIC) {
    if (head.length >= bytes.length && bytes.every((b, i) => head[i] === b)) return kind;
  }
  return "none";
}

export function compressionOfName(file: string): Compression {
  return EXTENSIONS[path.extname(file).toLowerCase()] ?? "none";
}

/**
 * What the file really holds, by its magic bytes. A name that promises a
 * compression the bytes do not have is an error (a truncated download, or a
 * file renamed by mistake), rather than a raw image written as garbage.
 */
export async function detectCompression(file: string): Promise<Compression> {
  let fh;
  try {
    fh = await fsp.open(file, "r");
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOENT") throw new PibakeError(`image ${file} does not exist`);
    throw new PibakeError(`cannot open image ${file}: ${e.message}`);
  }
  const head = Buffer.alloc(8);
  let n: number;
  try {
    n = (await fh.read(head, 0, head.length, 0)).bytesRead;
  } finally {
    await fh.close();
  }
  const kind = compressionOfMagic(head.subarray(0, n));
  const named = compressionOfName(file);
  if (named !== "none" && named !== kind) {
    throw new PibakeError(
      `${file} is named like ${named} data but does not start like it` +
        (kind === "none" ? "" : ` (it looks like ${kind})`) +
        `: the file may be truncated or misnamed`,
    );
  }
  return kind;
}

export interface ImageReader extends ImageInfo {
  /** The raw image bytes, start to end. Errors of the decompressor arrive as stream errors. */
  stream: Readable;
  /** Stop early: ends the stream and any decompressor process. Safe to call twice. */
  close(): Promise<void>;
}

export interface OpenImageOptions {
  /** Read buffer size for the file itself (the default suits large sequential reads). */
  highWaterMark?: number;
}

export interface ImageInfo {
  compression: Compression;
  /** The uncompressed size, when it is known without decompressing. */
  size?: number;
  /** A size that is probably right but not certain (gzip's ISIZE is modulo 4 GiB): for progress only. */
  sizeHint?: number;
  /** The member to read from a .zip. */
  entry?: string;
}

/** What an image file is and how large it unpacks, without unpacking it. */
export async function probeImage(file: string): Promise<ImageInfo> {
  const compression = await detectCompression(file);
  const stat = await fsp.stat(file);
  switch (compression) {
    case "none":
      return { compression, size: stat.size };
    case "gzip": {
      const isize = await gzipIsize(file, stat.size);
      const exact = isize === undefined ? undefined : gzipExactSize(isize, stat.size);
      return { compression, ...(exact !== undefined ? { size: exact } : {}), ...(isize !== undefined ? { sizeHint: isize } : {}) };
    }
    case "xz": {
      const size = await xzSize(file);
      return { compression, ...(size !== undefined ? { size } : {}) };
    }
    case "zstd": {
      const size = await zstdSize(file);
      return { compression, ...(size !== undefined ? { size } : {}) };
    }
    case "zip": {
      const entry = pickZipImage(await readZipDirectory(file), file);
      return { compression, size: entry.size, entry: entry.name };
    }
  }
}

export async function openImageReader(file: string, opts: OpenImageOptions = {}): Promise<ImageReader> {
  const info = await probeImage(file);
  const highWaterMark = opts.highWaterMark ?? 1 << 20;
  switch (info.compression) {
    case "none": {
      const stream = createReadStream(file, { highWaterMark });
      return { ...info, stream, close: async () => void stream.destroy() };
    }
    case "gzip": {
      const src = createReadStream(file, { highWaterMark });
      const gunzip = zlib.createGunzip({ chunkSize: 256 << 10 });
      // pipeline() destroys both sides on error, so a corrupt file errors the stream we return.
      pipeline(src, gunzip, () => {});
      return {
        ...info,
        stream: gunzip,
        close: async () => {
          src.destroy();
          gunzip.destroy();
        },
      };
    }
    case "xz":
      return { ...info, ...spawnReader(decompress("xz", file), file) };
    case "zstd":
      return { ...info, ...spawnReader(decompress("zstd", file), file) };
    case "zip":
      return { ...info, ...(await zipReader(file, info.entry!)) };
  }
}

/**
 * A decompressor's stdout as a stream that ends only once the process has
 * exited successfully, so that a corrupt or truncated file is an error and
 * never a short image.
 */
function spawnReader(c: Command, file: string): { stream: Readable; close(): Promise<void> } {
  const child = startPiped(c, { stdin: "ignore" });
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let closing = false;
  child.stdout.pipe(out, { end: false });
  void child.done.then((result) => {
    if (closing) return;
    if (result.exitCode === 0) {
      out.end();
      return;
    }
    const why = result.exitCode === undefined ? result.message : `${c.cmd} exited with ${result.exitCode}`;
    out.destroy(new PibakeError(`cannot decompress ${file}: ${result.stderr.trim() || why}`));
  });
  return {
    stream: out,
    close: async () => {
      if (closing) return;
      closing = true;
      child.stdout.unpipe(out);
      out.destroy();
      child.kill("SIGTERM");
      await child.done;
    },
  };
}

async function stdoutOf(c: Command): Promise<string | undefined> {
  const r = await runCommand(c);
  return r.exitCode === 0 ? r.stdout : undefined;
}

/** `xz --robot --list`: the totals line's fifth field is the uncompressed size. */
export async function xzSize(file: string): Promise<number | undefined> {
  const out = await stdoutOf(listXz(file));
  const totals = out?.split("\n").find((l) => l.startsWith("totals\t"));
  const n = Number(totals?.split("\t")[4]);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** zstd records the content size in the frame header when it compressed a file (not a pipe). */
export async function zstdSize(file: string): Promise<number | undefined> {
  const out = await stdoutOf(listZstd(file));
  const m = out && /Decompressed Size:.*\((\d+) B\)/.exec(out);
  return m ? Number(m[1]) : undefined;
}

async function gzipIsize(file: string, compressedSize: number): Promise<number | undefined> {
  if (compressedSize < 18) return undefined;
  const fh = await fsp.open(file, "r");
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, compressedSize - 4);
    return b.readUInt32LE(0);
  } finally {
    await fh.close();
  }
}

/**
 * ISIZE is the size modulo 2^32. Deflate expands at most about 1032:1, so the
 * size is certain only when no larger candidate (ISIZE + k * 2^32) could fit.
 */
export function gzipExactSize(isize: number, compressedSize: number): number | undefined {
  const maxSize = compressedSize * 1032;
  return isize + 2 ** 32 > maxSize ? isize : undefined;
}

export interface ZipEntry {
  name: string;
  size: number;
  compressedSize: number;
  method: number;
}

async function openZip(file: string): Promise<yauzl.ZipFile> {
  try {
    return await yauzl.openPromise(file, { lazyEntries: true, autoClose: false });
  } catch (err) {
    throw new PibakeError(`${file} is not a readable zip archive (${(err as Error).message})`);
  }
}

/** The entries of an open zip's central directory, in order. */
function zipEntries(zip: yauzl.ZipFile, file: string): Promise<yauzl.Entry[]> {
  return new Promise((resolve, reject) => {
    const entries: yauzl.Entry[] = [];
    zip.on("entry", (entry: yauzl.Entry) => {
      entries.push(entry);
      zip.readEntry();
    });
    zip.once("end", () => resolve(entries));
    zip.once("error", (err: Error) => reject(new PibakeError(`${file}: broken zip central directory (${err.message})`)));
    zip.readEntry();
  });
}

/** The central directory of a zip (Zip64 included), read by yauzl. */
export async function readZipDirectory(file: string): Promise<ZipEntry[]> {
  const zip = await openZip(file);
  try {
    return (await zipEntries(zip, file)).map((e) => ({
      name: e.fileName,
      size: e.uncompressedSize,
      compressedSize: e.compressedSize,
      method: e.compressionMethod,
    }));
  } finally {
    zip.close();
  }
}

/**
 * One member of a zip, inflated as it is read. yauzl checks the member's size;
 * its CRC-32 is checked here at the end, so that a corrupt archive is a stream
 * error and never a wrong image.
 */
async function zipReader(file: string, name: string): Promise<{ stream: Readable; close(): Promise<void> }> {
  const zip = await openZip(file);
  let raw: Readable;
  let entry: yauzl.Entry | undefined;
  try {
    entry = (await zipEntries(zip, file)).find((e) => e.fileName === name);
    if (!entry) throw new PibakeError(`${file} no longer holds ${name}`);
    raw = await zip.openReadStreamPromise(entry);
  } catch (err) {
    zip.close();
    throw err instanceof PibakeError ? err : new PibakeError(`cannot decompress ${file}: ${(err as Error).message}`);
  }
  const expected = entry.crc32;
  let crc = 0;
  const out = new Transform({
    readableHighWaterMark: 1 << 20,
    transform(chunk: Buffer, _encoding, done) {
      crc = zlib.crc32(chunk, crc);
      done(null, chunk);
    },
    flush(done) {
      done(crc >>> 0 === expected ? null : new PibakeError(`cannot decompress ${file}: ${name} fails its CRC-32 check (the archive is corrupt)`));
    },
  });
  raw.on("error", (err) => out.destroy(err instanceof PibakeError ? err : new PibakeError(`cannot decompress ${file}: ${err.message}`)));
  raw.pipe(out);
  // Closing the zip releases its file once the member's stream is done with it too.
  out.once("close", () => zip.close());
  return {
    stream: out,
    close: async () => {
      raw.unpipe(out);
      raw.destroy();
      out.destroy();
      zip.close();
    },
  };
}

/** The one image in a zip: the single .img member, or the single file if there is just one. */
export function pickZipImage(entries: ZipEntry[], file: string): ZipEntry {
  const files = entries.filter((e) => !e.name.endsWith("/"));
  const imgs = files.filter((e) => e.name.toLowerCase().endsWith(".img"));
  if (imgs.length === 1) return imgs[0]!;
  if (imgs.length === 0 && files.length === 1) return files[0]!;
  const names = files.map((e) => e.name).join(", ") || "nothing";
  throw new PibakeError(
    imgs.length === 0
      ? `${file} holds no .img file (it holds ${names})`
      : `${file} holds ${imgs.length} .img files (${names}): unpack the one you want and flash it`,
  );
}
