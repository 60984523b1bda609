/**
 * bmap-tools' block map (format 2.0): which blocks of an image hold data, with
 * a checksum per range, so that flashing writes (and verifies) only those.
 *
 * The XML is small and machine-written, so it is read with a strict scanner
 * rather than a general XML parser; anything unexpected is an error naming
 * the file.
 */
import { createHash, getHashes } from "node:crypto";
import { promises as fsp } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import { writeFileAtomic } from "../host/files.js";

export const BMAP_VERSION = "2.0";
export const DEFAULT_BLOCK_SIZE = 4096;

/** A run of mapped blocks, `first` to `last` inclusive, as bmap-tools numbers them. */
export interface BmapRange {
  first: number;
  last: number;
  /** Hex digest of the range's bytes (type given by Bmap.checksumType); absent in old bmaps. */
  checksum?: string;
}

export interface Bmap {
  version: string;
  imageSize: number;
  blockSize: number;
  blocksCount: number;
  mappedBlocksCount: number;
  /** sha256 for what we write; whatever node:crypto knows is accepted when reading. */
  checksumType?: string;
  ranges: BmapRange[];
}

/** A mapped range in bytes: [start, end) clipped to the image size. */
export interface ByteRange {
  start: number;
  end: number;
  checksum?: string;
}

export class BmapError extends PibakeError {
  constructor(message: string) {
    super(message, 1);
    this.name = "BmapError";
  }
}

export function byteRanges(bmap: Bmap): ByteRange[] {
  return bmap.ranges.map((r) => ({
    start: r.first * bmap.blockSize,
    end: Math.min((r.last + 1) * bmap.blockSize, bmap.imageSize),
    ...(r.checksum ? { checksum: r.checksum } : {}),
  }));
}

export function mappedBytes(bmap: Bmap): number {
  return byteRanges(bmap).reduce((n, r) => n + (r.end - r.start), 0);
}

/** bmap-tools' human_size, so that our comments read like theirs. */
function humanSize(size: number): string {
  if (size === 1) return "1 byte";
  if (size < 512) return `${size} bytes`;
  let v = size;
  for (const unit of ["KiB", "MiB", "GiB", "TiB"]) {
    v /= 1024;
    if (v < 1024) return `${v.toFixed(1)} ${unit}`;
  }
  return `${v.toFixed(1)} EiB`;
}

function hexLength(type: string): number {
  return createHash(type).digest("hex").length;
}

function stripComments(xml: string): string {
  return xml.replace(/<!--[\s\S]*?-->/g, "");
}

function parseCount(text: string | undefined, tag: string, where: string): number {
  if (text === undefined) throw new BmapError(`${where}: <${tag}> is missing`);
  const t = text.trim();
  if (!/^\d+$/.test(t)) throw new BmapError(`${where}: <${tag}> is not a number: "${t}"`);
  const n = Number(t);
  if (!Number.isSafeInteger(n)) throw new BmapError(`${where}: <${tag}> is too large: ${t}`);
  return n;
}

function element(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  return m?.[1];
}

/**
 * Parse and check a bmap. `raw` is the file's exact bytes: the file checksum
 * is computed as bmap-tools does, over the file with the checksum's own text
 * replaced by ASCII zeros.
 */
export function parseBmap(raw: Buffer | string, where = "bmap"): Bmap {
  const bytes = typeof raw === "string" ? Buffer.from(raw, "utf8") : raw;
  const { version, major, minor, body } = bmapRoot(stripComments(bytes.toString("utf8")), where);
  const sizes = bmapSizes(body, where);
  const kind = checksumKind(body, major, minor, where);
  checkFileChecksum(bytes, body, kind, where);
  const ranges = blockMap(body, kind.attr, sizes, where);
  return { version, ...sizes, ...(kind.checksumType ? { checksumType: kind.checksumType } : {}), ranges };
}

/** The <bmap> element: its version, which must be one we read, and its body. */
function bmapRoot(xml: string, where: string): { version: string; major: number; minor: number; body: string } {
  const root = /<bmap\s+version\s*=\s*"([^"]*)"\s*>([\s\S]*)<\/bmap>/.exec(xml);
  if (!root) throw new BmapError(`${where}: not a bmap file (no <bmap version="..."> element)`);
  const version = root[1]!.trim();
  const vm = /^(\d+)\.(\d+)$/.exec(version);
  if (!vm) throw new BmapError(`${where}: bad bmap version "${version}"`);
  const major = Number(vm[1]);
  const minor = Number(vm[2]);
  if (major > 2) throw new BmapError(`${where}: bmap version ${version} is not supported (up to ${BMAP_VERSION})`);
  return { version, major, minor, body: root[2]! };
}

type BmapSizes = Pick<Bmap, "imageSize" | "blockSize" | "blocksCount" | "mappedBlocksCount">;

/** The image's size and its blocks, which must agree. */
function bmapSizes(body: string, where: string): BmapSizes {
  const imageSize = parseCount(element(body, "ImageSize"), "ImageSize", where);
  const blockSize = parseCount(element(body, "BlockSize"), "BlockSize", where);
  const blocksCount = parseCount(element(body, "BlocksCount"), "BlocksCount", where);
  const mappedBlocksCount = parseCount(element(body, "MappedBlocksCount"), "MappedBlocksCount", where);
  if (blockSize === 0 || blockSize % 512 !== 0) throw new BmapError(`${where}: block size ${blockSize} is not a multiple of 512`);
  if (blocksCount !== Math.ceil(imageSize / blockSize)) {
    throw new BmapError(`${where}: inconsistent bmap: ${imageSize} bytes is not ${blocksCount} blocks of ${blockSize} bytes`);
  }
  return { imageSize, blockSize, blocksCount, mappedBlocksCount };
}

/** How a version names its checksums: the type, the ranges' attribute and the file checksum's element (none before 1.3). */
interface ChecksumKind {
  checksumType?: string | undefined;
  attr?: string;
  fileChecksumTag?: string;
}

function checksumKind(body: string, major: number, minor: number, where: string): ChecksumKind {
  // 2.x and the mistaken 1.4 name the checksum type; 1.3 used sha1; older ones had none.
  let kind: ChecksumKind = {};
  if (major >= 2 || (major === 1 && minor === 4)) {
    const checksumType = element(body, "ChecksumType")?.trim().toLowerCase();
    if (!checksumType) throw new BmapError(`${where}: <ChecksumType> is missing`);
    kind = { checksumType, attr: "chksum", fileChecksumTag: "BmapFileChecksum" };
  } else if (major === 1 && minor === 3) {
    kind = { checksumType: "sha1", attr: "sha1", fileChecksumTag: "BmapFileSHA1" };
  }
  if (kind.checksumType && !getHashes().includes(kind.checksumType)) {
    throw new BmapError(`${where}: unknown checksum type "${kind.checksumType}"`);
  }
  return kind;
}

/** The file's own checksum, when its version has one, computed over the file with that field zeroed. */
function checkFileChecksum(bytes: Buffer, body: string, kind: ChecksumKind, where: string): void {
  const { checksumType, fileChecksumTag } = kind;
  if (!checksumType || !fileChecksumTag) return;
  const stored = element(body, fileChecksumTag)?.trim();
  if (!stored) throw new BmapError(`${where}: <${fileChecksumTag}> is missing`);
  const len = hexLength(checksumType);
  if (stored.length !== len || !/^[0-9a-f]+$/i.test(stored)) throw new BmapError(`${where}: bad <${fileChecksumTag}> "${stored}"`);
  // Like bmap-tools: the first occurrence of the stored value is the field itself.
  const pos = bytes.indexOf(Buffer.from(stored, "latin1"));
  const zeroed = Buffer.from(bytes);
  zeroed.fill(0x30, pos, pos + len);
  const actual = createHash(checksumType).update(zeroed).digest("hex");
  if (actual !== stored.toLowerCase()) {
    throw new BmapError(`${where}: the bmap file is corrupt (its checksum is ${actual}, the file says ${stored})`);
  }
}

/** The <BlockMap>'s ranges: in order, inside the image, with their checksums, and as many blocks as <MappedBlocksCount> says. */
function blockMap(body: string, attr: string | undefined, sizes: BmapSizes, where: string): BmapRange[] {
  const { blocksCount, mappedBlocksCount } = sizes;
  const map = /<BlockMap>([\s\S]*)<\/BlockMap>/.exec(body);
  if (!map) throw new BmapError(`${where}: <BlockMap> is missing`);
  const ranges: BmapRange[] = [];
  const rangeRe = /<Range((?:\s+[A-Za-z0-9_]+\s*=\s*"[^"]*")*)\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*<\/Range>/g;
  const leftover = map[1]!.replace(rangeRe, "").trim();
  if (leftover) throw new BmapError(`${where}: unexpected content in <BlockMap>: "${leftover.slice(0, 60)}"`);
  let total = 0;
  for (const m of map[1]!.matchAll(rangeRe)) {
    const first = Number(m[2]);
    const last = m[3] === undefined ? first : Number(m[3]);
    if (last < first) throw new BmapError(`${where}: range ${first}-${last} is backwards`);
    if (last >= blocksCount) throw new BmapError(`${where}: range ${first}-${last} lies beyond the image (${blocksCount} blocks)`);
    const prev = ranges[ranges.length - 1];
    if (prev && first <= prev.last) throw new BmapError(`${where}: range ${first}-${last} overlaps or precedes ${prev.first}-${prev.last}`);
    const range: BmapRange = { first, last };
    if (attr) {
      const a = new RegExp(`\\b${attr}\\s*=\\s*"([^"]*)"`).exec(m[1] ?? "");
      if (a) range.checksum = a[1]!.toLowerCase();
    }
    ranges.push(range);
    total += last - first + 1;
  }
  if (total !== mappedBlocksCount) {
    throw new BmapError(`${where}: <MappedBlocksCount> says ${mappedBlocksCount} but the ranges hold ${total} blocks`);
  }
  return ranges;
}

export async function readBmap(file: string): Promise<Bmap> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(file);
  } catch (err) {
    throw new BmapError(`cannot read bmap ${file}: ${(err as Error).message}`);
  }
  return parseBmap(raw, file);
}

/** The XML bmap-tools writes, including its checksum of the file itself. */
export function serializeBmap(bmap: Bmap): string {
  const type = bmap.checksumType ?? "sha256";
  const len = hexLength(type);
  const mappedSize = bmap.mappedBlocksCount * bmap.blockSize;
  const percent = bmap.blocksCount === 0 ? 0 : (bmap.mappedBlocksCount * 100) / bmap.blocksCount;
  const lines = [
    `<?xml version="1.0" ?>`,
    `<!-- This file contains the block map for an image file, which is basically`,
    `     a list of useful (mapped) block numbers in the image file. In other words,`,
    `     it lists only those blocks which contain data (boot sector, partition`,
    `     table, file-system metadata, files, directories, extents, etc). These`,
    `     blocks have to be copied to the target device. The other blocks do not`,
    `     contain any useful data and do not have to be copied to the target`,
    `     device. Written by pibake in bmap-tools' format. -->`,
    ``,
    `<bmap version="${BMAP_VERSION}">`,
    `    <!-- Image size in bytes: ${humanSize(bmap.imageSize)} -->`,
    `    <ImageSize> ${bmap.imageSize} </ImageSize>`,
    ``,
    `    <!-- Size of a block in bytes -->`,
    `    <BlockSize> ${bmap.blockSize} </BlockSize>`,
    ``,
    `    <!-- Count of blocks in the image file -->`,
    `    <BlocksCount> ${bmap.blocksCount} </BlocksCount>`,
    ``,
    `    <!-- Count of mapped blocks: ${humanSize(mappedSize)} or ${percent.toFixed(1)}% -->`,
    `    <MappedBlocksCount> ${bmap.mappedBlocksCount} </MappedBlocksCount>`,
    ``,
    `    <!-- Type of checksum used in this file -->`,
    `    <ChecksumType> ${type} </ChecksumType>`,
    ``,
    `    <!-- The checksum of this bmap file. When it is calculated, the value of`,
    `         the checksum has be zero (all ASCII "0" symbols).  -->`,
    `    <BmapFileChecksum> ${"0".repeat(len)} </BmapFileChecksum>`,
    ``,
    `    <!-- The block map which consists of elements which may either be a`,
    `         range of blocks or a single block. The 'chksum' attribute`,
    `         (if present) is the checksum of this blocks range. -->`,
    `    <BlockMap>`,
    ...bmap.ranges.map((r) => {
      const cs = r.checksum ? ` chksum="${r.checksum}"` : "";
      return `        <Range${cs}> ${r.first === r.last ? r.first : `${r.first}-${r.last}`} </Range>`;
    }),
    `    </BlockMap>`,
    `</bmap>`,
    ``,
  ];
  const zeroed = lines.join("\n");
  const sum = createHash(type).update(zeroed, "utf8").digest("hex");
  return zeroed.replace(`<BmapFileChecksum> ${"0".repeat(len)} </BmapFileChecksum>`, `<BmapFileChecksum> ${sum} </BmapFileChecksum>`);
}

export interface CreateBmapOptions {
  /** Where to write; `<image>.bmap` by default. */
  output?: string;
  blockSize?: number;
  signal?: AbortSignal;
}

/** Bytes [start, end) of a chunk: whole blocks that are not all zeros (the last block may be short). */
export interface DataRun {
  start: number;
  end: number;
}

const ZERO_BLOCKS = Buffer.alloc(1 << 20);

/**
 * The runs of blocks in `buf[0, len)` that hold data, in order; none for a
 * chunk of zeros (tested first as a whole: the common case in free space).
 */
export function dataRuns(buf: Buffer, len: number, blockSize: number): DataRun[] {
  if (isZero(buf, 0, len)) return [];
  const runs: DataRun[] = [];
  let start = -1;
  for (let off = 0; off < len; off += blockSize) {
    const end = Math.min(off + blockSize, len);
    if (!isZero(buf, off, end)) {
      if (start < 0) start = off;
    } else if (start >= 0) {
      runs.push({ start, end: off });
      start = -1;
    }
  }
  if (start >= 0) runs.push({ start, end: len });
  return runs;
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let at = from; at < to; at += ZERO_BLOCKS.length) {
    const n = Math.min(ZERO_BLOCKS.length, to - at);
    if (buf.compare(ZERO_BLOCKS, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}

/**
 * Builds a bmap from an image's bytes read in order: every block that is not
 * all zeros is mapped, with a sha256 per contiguous range. Fed by createBmap
 * (which reads everything) and by delivery (which skips holes via gap()).
 */
export class BmapBuilder {
  private readonly ranges: BmapRange[] = [];
  private current: { first: number; hash: ReturnType<typeof createHash> } | undefined;

  constructor(
    readonly imageSize: number,
    readonly blockSize = DEFAULT_BLOCK_SIZE,
  ) {}

  private close(last: number): void {
    if (!this.current) return;
    this.ranges.push({ first: this.current.first, last, checksum: this.current.hash.digest("hex") });
    this.current = undefined;
  }

  /** `len` bytes of `buf`, which stand at byte `pos` of the image (a block boundary). */
  feed(buf: Buffer, len: number, pos: number): void {
    this.feedRuns(buf, len, pos, dataRuns(buf, len, this.blockSize));
  }

  /** As feed, with the chunk's data runs already found (dataRuns, same block size). */
  feedRuns(buf: Buffer, len: number, pos: number, runs: readonly DataRun[]): void {
    const firstBlock = pos / this.blockSize;
    let at = 0;
    for (const run of runs) {
      // Zero blocks before this run end the open range.
      if (run.start > at) this.close(firstBlock + at / this.blockSize - 1);
      if (!this.current) this.current = { first: firstBlock + run.start / this.blockSize, hash: createHash("sha256") };
      this.current.hash.update(buf.subarray(run.start, run.end));
      at = run.end;
    }
    if (at < len) this.close(firstBlock + at / this.blockSize - 1);
  }

  /** Zeros that are not read (a hole) start at byte `pos` (a block boundary): they end any open range. */
  gap(pos: number): void {
    this.close(pos / this.blockSize - 1);
  }

  finish(): Bmap {
    const blocksCount = Math.ceil(this.imageSize / this.blockSize);
    this.close(blocksCount - 1);
    return {
      version: BMAP_VERSION,
      imageSize: this.imageSize,
      blockSize: this.blockSize,
      blocksCount,
      mappedBlocksCount: this.ranges.reduce((n, r) => n + r.last - r.first + 1, 0),
      checksumType: "sha256",
      ranges: this.ranges,
    };
  }
}

/**
 * Scan an image and map every block that is not all zeros (the build fills
 * free space with zeros first, so this is the data). One sequential pass:
 * zero tests and range checksums are computed from the same reads.
 */
export async function createBmap(imagePath: string, opts: CreateBmapOptions = {}): Promise<{ path: string; bmap: Bmap }> {
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  const output = opts.output ?? `${imagePath}.bmap`;
  const fh = await fsp.open(imagePath, "r");
  let bmap: Bmap;
  try {
    const imageSize = (await fh.stat()).size;
    if (imageSize === 0) throw new BmapError(`cannot make a bmap for ${imagePath}: the image is empty`);
    const builder = new BmapBuilder(imageSize, blockSize);
    const chunkSize = blockSize * Math.max(1, Math.floor((4 << 20) / blockSize));
    const buf = Buffer.alloc(chunkSize);
    for (let pos = 0; pos < imageSize; ) {
      opts.signal?.throwIfAborted();
      const want = Math.min(chunkSize, imageSize - pos);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
        if (bytesRead === 0) throw new BmapError(`${imagePath} shrank while its bmap was being made`);
        got += bytesRead;
      }
      builder.feed(buf, got, pos);
      pos += got;
    }
    bmap = builder.finish();
  } finally {
    await fh.close();
  }
  await writeFileAtomic(output, serializeBmap(bmap));
  return { path: output, bmap };
}

/**
 * The bmap that belongs to an image, looked up as bmaptool does:
 * `foo.img.xz.bmap`, then `foo.img.bmap`, then `foo.bmap`.
 */
export async function findBmapFor(imagePath: string): Promise<string | undefined> {
  let base = imagePath;
  for (;;) {
    const candidate = `${base}.bmap`;
    try {
      if ((await fsp.stat(candidate)).isFile()) return candidate;
    } catch {
      // Not there: try the name with one extension less.
    }
    const ext = path.extname(base);
    if (!ext) return undefined;
    base = base.slice(0, -ext.length);
  }
}
