import { promises as fsp } from "node:fs";
import { PibakeError } from "../../errors.js";
import { SECTOR_SIZE, withPartitionSectors, type MbrPartition } from "../../image/partitions.js";
import type { BuildLog } from "../../host/log.js";
import { runCommand } from "../../host/process.js";
import { minimumExt4, repairExt4, shrinkExt4 } from "./commands.js";

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
/** Partition ends and image sizes are kept on 4 MiB boundaries, as Raspberry Pi OS's are. */
export const ALIGN = 4 * MiB;

export function alignUp(n: number, to = ALIGN): number {
  return Math.ceil(n / to) * to;
}

/**
 * `--grow SIZE`: "auto" (the default), "0" or "none", or a size to add to the
 * root partition: 512M, 1G, 1.5GiB, 2048MB (powers of 1024 throughout, as
 * truncate(1) reads K, M, G).
 */
export function parseGrow(text: string | undefined): "auto" | number {
  if (text === undefined || text === "" || text === "auto") return "auto";
  if (text === "none" || text === "0") return 0;
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new PibakeError(`--grow ${text}: not a size: use e.g. 512M, 1G or 1.5G (or "auto", or 0 not to grow)`, 2);
  const unit = { "": 1, K: 1024, M: MiB, G: GiB, T: 1024 * GiB }[m[2]!.toUpperCase() as "" | "K" | "M" | "G" | "T"];
  const bytes = Math.round(Number(m[1]) * unit);
  if (bytes > 64 * GiB)
    throw new PibakeError(`--grow ${text}: more than 64 GiB is surely a mistake (the first boot expands the root file system to the card anyway)`, 2);
  return alignUp(bytes);
}

/** Free space a build that installs no package makes sure the root file system has: the overlay, logs, apt's lists. */
export const AUTO_FREE_WITHOUT_PACKAGES = 128 * MiB;

/**
 * Node-RED installed at build time (nodeRed.install "build") needs room beyond
 * the stage's packages: Node.js's Debian packages, npm, Node-RED, the
 * dashboard and npm's cache. Without it the first user's npm install hits the
 * blocks ext4 reserves for root and fails with "No space left on device".
 */
export const AUTO_FREE_NODE_RED_BUILD = 1 * GiB;

/**
 * Make the image file `add` bytes longer and give them to the root partition
 * (the last one). The file system is grown afterwards (e2fsck -f, resize2fs on
 * the partition's loop device). Returns the root partition with its new size.
 */
export async function growImage(image: string, root: MbrPartition, add: number): Promise<MbrPartition> {
  const fh = await fsp.open(image, "r+");
  try {
    const { size } = await fh.stat();
    const newSize = alignUp(Math.max(size, root.offset + root.size) + add);
    const sectors = (newSize - root.offset) / SECTOR_SIZE;
    const mbr = Buffer.alloc(SECTOR_SIZE);
    await fh.read(mbr, 0, SECTOR_SIZE, 0);
    await fh.truncate(newSize);
    await fh.write(withPartitionSectors(mbr, root.number, sectors), 0, SECTOR_SIZE, 0);
    return { ...root, sectors, size: sectors * SECTOR_SIZE };
  } finally {
    await fh.close();
  }
}

/** After the file system was shrunk to `fsBytes`: the root partition and the file end there. */
export async function truncateImage(image: string, root: MbrPartition, fsBytes: number): Promise<MbrPartition> {
  const partBytes = alignUp(fsBytes);
  const sectors = partBytes / SECTOR_SIZE;
  const fh = await fsp.open(image, "r+");
  try {
    const mbr = Buffer.alloc(SECTOR_SIZE);
    await fh.read(mbr, 0, SECTOR_SIZE, 0);
    await fh.write(withPartitionSectors(mbr, root.number, sectors), 0, SECTOR_SIZE, 0);
    await fh.truncate(root.offset + partBytes);
    return { ...root, sectors, size: partBytes };
  } finally {
    await fh.close();
  }
}

/** resize2fs -P: the smallest size (in blocks) the file system could have. */
export function parseMinimumBlocks(stdout: string): number {
  const m = /minimum size of the filesystem:\s*(\d+)/i.exec(stdout);
  if (!m) throw new PibakeError(`cannot read resize2fs's estimate of the minimum size from: ${stdout.trim().slice(0, 200)}`);
  return Number(m[1]);
}

/** The size to shrink to: used size plus a margin of 10% or 256 MiB, whichever is more, on a 4 MiB boundary. */
export function shrinkTarget(minBytes: number, currentBytes: number): number | undefined {
  const target = alignUp(minBytes + Math.max(256 * MiB, Math.ceil(minBytes * 0.1)));
  return target < currentBytes ? target : undefined;
}

export interface ShrinkResult {
  fsBytes: number;
}

/** Shrink the (unmounted, checked) ext4 on `dev`; the caller then shortens the partition and the file. */
export async function shrinkFileSystem(
  dev: string,
  blockSize: number,
  currentBytes: number,
  opts: { log?: BuildLog; signal?: AbortSignal },
): Promise<ShrinkResult | undefined> {
  const ctx = { ...(opts.log ? { log: opts.log } : {}), ...(opts.signal ? { signal: opts.signal } : {}) };
  const est = await runCommand(minimumExt4(dev), ctx);
  const minBytes = parseMinimumBlocks(est.stdout) * blockSize;
  const target = shrinkTarget(minBytes, currentBytes);
  if (target === undefined) return undefined;
  await runCommand(shrinkExt4(dev, target), ctx);
  return { fsBytes: target };
}

/** e2fsck -fy: fixes what it can; 0, 1 and 2 mean the file system is now clean. */
export async function checkFileSystem(dev: string, opts: { log?: BuildLog; signal?: AbortSignal; what?: string }): Promise<void> {
  await runCommand(repairExt4(dev, opts.what), {
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
}
