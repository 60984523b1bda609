/**
 * Compressed images: recognise them by their first bytes, read them as a
 * stream of raw image bytes (never a temporary copy), and compress them with
 * the standard multi-threaded tools.
 */
import { execa } from "execa";
import { createReadStream, promises as fsp } from "node:fs";
import path from "node:path";
import { PassThrough, pipeline, type Readable } from "node:stream";
import zlib from "node:zlib";
import { PibakeError } from "../errors.js";

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
      return { ...info, ...spawnReader("xz", ["-dc", "-T0", "--", file], file) };
    case "zstd":
      return { ...info, ...spawnReader("zstd", ["-dc", "-q", "--", file], file) };
    case "zip": {
      // unzip treats member names as patterns; brackets make each special character literal.
      const pattern = info.entry!.replace(/[[\]*?\\]/g, (c) => `[${c}]`);
      return { ...info, ...spawnReader("unzip", ["-p", "--", file, pattern], file) };
    }
  }
}

/**
 * A decompressor's stdout as a stream that ends only once the process has
 * exited successfully, so that a corrupt or truncated file is an error and
 * never a short image.
 */
function spawnReader(cmd: string, args: string[], file: string): { stream: Readable; close(): Promise<void> } {
  const child = execa(cmd, args, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: { stdout: false, stderr: true },
    reject: false,
  });
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let closing = false;
  child.stdout.pipe(out, { end: false });
  child.then(
    (result) => {
      if (closing) return;
      if (result.exitCode === 0) {
        out.end();
        return;
      }
      const stderr = String(result.stderr ?? "").trim();
      const why = result.failed && result.exitCode === undefined ? result.shortMessage : `${cmd} exited with ${result.exitCode}`;
      out.destroy(new PibakeError(`cannot decompress ${file}: ${stderr || why}`));
    },
    (err: Error) => out.destroy(new PibakeError(`cannot decompress ${file}: ${err.message}`)),
  );
  // execa reports a missing program as a failed result; make that message useful.
  child.catch(() => {});
  return {
    stream: out,
    close: async () => {
      if (closing) return;
      closing = true;
      child.stdout.unpipe(out);
      out.destroy();
      child.kill("SIGTERM");
      await child.catch(() => {});
    },
  };
}

async function tool(cmd: string, args: string[]): Promise<string | undefined> {
  const r = await execa(cmd, args, { reject: false, stdin: "ignore" });
  return r.exitCode === 0 ? String(r.stdout) : undefined;
}

/** `xz --robot --list`: the totals line's fifth field is the uncompressed size. */
export async function xzSize(file: string): Promise<number | undefined> {
  const out = await tool("xz", ["--robot", "--list", "--", file]);
  const totals = out?.split("\n").find((l) => l.startsWith("totals\t"));
  const n = Number(totals?.split("\t")[4]);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** zstd records the content size in the frame header when it compressed a file (not a pipe). */
export async function zstdSize(file: string): Promise<number | undefined> {
  const out = await tool("zstd", ["-lv", "--", file]);
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

/** The central directory of a zip (Zip64 included), read from the end of the file. */
export async function readZipDirectory(file: string): Promise<ZipEntry[]> {
  const fh = await fsp.open(file, "r");
  try {
    const { size } = await fh.stat();
    const tailLen = Math.min(size, 65557 + 20);
    const tail = Buffer.alloc(tailLen);
    await fh.read(tail, 0, tailLen, size - tailLen);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new PibakeError(`${file} is not a readable zip archive (no end of central directory)`);
    let count = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    // Zip64: the locator sits just before the classic record and points at the Zip64 record.
    if (eocd >= 20 && tail.readUInt32LE(eocd - 20) === 0x07064b50) {
      const recOffset = Number(tail.readBigUInt64LE(eocd - 20 + 8));
      const rec = Buffer.alloc(56);
      await fh.read(rec, 0, 56, recOffset);
      if (rec.readUInt32LE(0) !== 0x06064b50) throw new PibakeError(`${file}: broken Zip64 end of central directory`);
      count = Number(rec.readBigUInt64LE(32));
      cdSize = Number(rec.readBigUInt64LE(40));
      cdOffset = Number(rec.readBigUInt64LE(48));
    }
    const cd = Buffer.alloc(cdSize);
    await fh.read(cd, 0, cdSize, cdOffset);
    const entries: ZipEntry[] = [];
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50) throw new PibakeError(`${file}: broken zip central directory`);
      const method = cd.readUInt16LE(p + 10);
      let compressedSize = cd.readUInt32LE(p + 20);
      let uncompressed = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28);
      const extraLen = cd.readUInt16LE(p + 30);
      const commentLen = cd.readUInt16LE(p + 32);
      const name = cd.toString("utf8", p + 46, p + 46 + nameLen);
      // Zip64 extra field: 64-bit values appear only for the fields that overflowed, in this order.
      let e = p + 46 + nameLen;
      const end = e + extraLen;
      while (e + 4 <= end) {
        const id = cd.readUInt16LE(e);
        const len = cd.readUInt16LE(e + 2);
        if (id === 0x0001) {
          let q = e + 4;
          if (uncompressed === 0xffffffff) {
            uncompressed = Number(cd.readBigUInt64LE(q));
            q += 8;
          }
          if (compressedSize === 0xffffffff) compressedSize = Number(cd.readBigUInt64LE(q));
        }
        e += 4 + len;
      }
      entries.push({ name, size: uncompressed, compressedSize, method });
      p = end + commentLen;
    }
    return entries;
  } finally {
    await fh.close();
  }
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

export interface CompressOptions {
  /** Compression level; the tools' defaults otherwise. */
  level?: number;
  signal?: AbortSignal;
}

/**
 * Compress `src` into `dest` with all cores. The result appears at `dest`
 * only when complete (written under a temporary name, then renamed).
 */
export async function compressFile(src: string, kind: "xz" | "zstd", dest: string, opts: CompressOptions = {}): Promise<void> {
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.${process.pid}.tmp`);
  const level = opts.level === undefined ? [] : [`-${opts.level}`];
  const args =
    kind === "xz" ? ["-T0", "-c", ...level, "--", src] : ["-T0", "-q", "-c", ...level, "--", src];
  try {
    const r = await execa(kind, args, {
      stdin: "ignore",
      stdout: { file: tmp },
      reject: false,
      ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    });
    if (r.isCanceled) throw opts.signal?.reason ?? new PibakeError(`compressing ${src} was cancelled`);
    if (r.exitCode !== 0) {
      const why = String(r.stderr ?? "").trim() || r.shortMessage;
      throw new PibakeError(`cannot compress ${src} with ${kind}: ${why}`);
    }
    await fsp.rename(tmp, dest);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}
