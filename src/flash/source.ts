/**
 * What `pibake flash` writes must be a whole disk image: a partition table in
 * its first sector (an MBR, or the protective MBR in front of a GPT), read
 * through the decompressor for a compressed image. A tab-completion slip onto
 * the .sha256, .bmap, .manifest.json or .log beside an image, or any other
 * file, is refused before any question is asked or the target is opened.
 */
import { existsSync, promises as fsp } from "node:fs";
import { PibakeError } from "../errors.js";
import { openImageReader, type ImageInfo } from "../image/compression.js";
import { SECTOR_SIZE } from "../image/partitions.js";

/**
 * Why a disk's first sector is not a partition table, or undefined when it is.
 * The 55 aa signature alone is not enough: a file system's boot sector (a FAT
 * partition copied on its own) ends in it too, but its bytes where the four
 * partition entries would be are code and text, not entries.
 */
export function partitionTableProblem(head: Buffer): string | undefined {
  if (head.length === 0) return "it is empty";
  if (head.length < SECTOR_SIZE) return `it is ${head.length} bytes long, shorter than one sector`;
  if (head[510] !== 0x55 || head[511] !== 0xaa) return "its first sector holds no partition table (no MBR or GPT signature)";
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    const status = head[e]!;
    const type = head[e + 4]!;
    if (status !== 0x00 && status !== 0x80)
      return "its first sector ends like a boot sector but holds no valid partition table (a file system on its own, not a whole disk)";
    if (type === 0) continue;
    if (head.readUInt32LE(e + 8) === 0 || head.readUInt32LE(e + 12) === 0)
      return "its partition table has an entry that starts at sector 0 or is empty: it is damaged, or not a partition table";
    used++;
  }
  return used === 0 ? "its partition table is empty" : undefined;
}

/** The files pibake delivers beside an image (src/image/deliver.ts), and what each one is. */
const SIDECARS: { suffix: string; what: string; strip: string }[] = [
  { suffix: ".sha256", what: "the checksum file", strip: ".sha256" },
  { suffix: ".bmap", what: "the block map", strip: ".bmap" },
  { suffix: ".manifest.json", what: "the build manifest", strip: ".manifest.json" },
  { suffix: ".log", what: "the build log", strip: ".log" },
];

const IMAGE_ENDINGS = ["", ".xz", ".zst", ".gz", ".img", ".img.xz", ".img.zst", ".img.gz", ".zip"];

/** "the checksum file of deploy/x.img.xz" when the file is one of pibake's sidecars and its image is there. */
export function sidecarOf(file: string, exists: (p: string) => boolean = existsSync): string | undefined {
  const lower = file.toLowerCase();
  const sidecar = SIDECARS.find((s) => lower.endsWith(s.suffix));
  if (!sidecar) return undefined;
  const stem = file.slice(0, file.length - sidecar.strip.length);
  const image = IMAGE_ENDINGS.map((e) => stem + e).find((p) => p !== file && /\.(img|xz|zst|gz|zip)$/i.test(p) && exists(p));
  return image ? `${sidecar.what} of ${image}` : undefined;
}

/** The first `bytes` of the raw image, decompressing only as far as needed. */
export async function readImageStart(file: string, info: ImageInfo, bytes = SECTOR_SIZE): Promise<Buffer> {
  if (info.compression === "none") {
    const fh = await fsp.open(file, "r");
    try {
      const buf = Buffer.alloc(bytes);
      const { bytesRead } = await fh.read(buf, 0, bytes, 0);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }
  const reader = await openImageReader(file);
  const chunks: Buffer[] = [];
  let got = 0;
  try {
    for await (const chunk of reader.stream) {
      chunks.push(chunk as Buffer);
      got += (chunk as Buffer).length;
      if (got >= bytes) break;
    }
  } finally {
    await reader.close();
  }
  return Buffer.concat(chunks).subarray(0, bytes);
}

/** Refuse (exit 2) a source that is not a whole disk image, naming the image when it is one of its sidecars. */
export async function checkFlashSource(file: string, shownAs: string, info: ImageInfo): Promise<void> {
  const problem = partitionTableProblem(await readImageStart(file, info));
  if (!problem) return;
  const packed = info.compression === "none" ? "" : ` once decompressed (${info.compression}${info.entry ? `, member ${info.entry}` : ""})`;
  const sidecar = sidecarOf(shownAs);
  const what = sidecar ? `it is ${sidecar}: flash that instead` : "flash the .img (or .img.xz, .img.zst, .img.gz, .zip) that pibake build made";
  throw new PibakeError(`${shownAs} is not a disk image${packed}: ${problem}; ${what}. Nothing was written`, 2);
}
