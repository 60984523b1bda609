/**
 * The MBR partition table of a disk image, and the checks that tell a
 * Raspberry Pi OS image (FAT boot partition, ext4 root partition) from
 * anything else. Pure functions over buffers: reading the bytes is the
 * caller's business, so that everything here is unit-tested without images.
 */
import { PibakeError } from "../errors.js";

export const SECTOR_SIZE = 512;

export interface MbrPartition {
  /** 1 to 4, as Linux numbers primary partitions. */
  number: number;
  /** The partition type byte, e.g. 0x0c (FAT32 LBA) or 0x83 (Linux). */
  type: number;
  bootable: boolean;
  startSector: number;
  sectors: number;
  /** In bytes, for losetup --offset/--sizelimit and mtools' @@offset. */
  offset: number;
  size: number;
}

export interface MbrTable {
  /** The 32-bit disk identifier: PARTUUIDs are `<diskId>-01`, `<diskId>-02`. */
  diskId: string;
  /** Used entries only (type not 0), in table order. */
  partitions: MbrPartition[];
}

export const FAT_TYPES = new Set([0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e]);
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const GPT_PROTECTIVE = 0xee;

export function hexType(t: number): string {
  return `0x${t.toString(16).padStart(2, "0")}`;
}

/** Names for the types people are likely to meet, for messages. */
export function typeName(t: number): string {
  if (FAT_TYPES.has(t)) return "FAT";
  if (t === 0x83) return "Linux";
  if (t === 0x07) return "NTFS/exFAT";
  if (t === 0x82) return "Linux swap";
  if (t === 0x8e) return "Linux LVM";
  if (EXTENDED_TYPES.has(t)) return "extended";
  if (t === GPT_PROTECTIVE) return "GPT protective";
  return "unknown";
}

/**
 * Parse the first sector of a disk image. `label` names the image in errors.
 * A GPT disk, a missing boot signature or an empty table are errors that say
 * what the image is instead.
 */
export function parseMbr(sector0: Buffer, label = "image"): MbrTable {
  if (sector0.length < SECTOR_SIZE) {
    throw new PibakeError(
      `${label}: the file is too short to hold a partition table (${sector0.length} bytes): it is not a disk image, or the download is truncated`,
    );
  }
  if (sector0[510] !== 0x55 || sector0[511] !== 0xaa) {
    throw new PibakeError(
      `${label}: no MBR partition table (the first sector does not end in 55 aa): pibake needs a Raspberry Pi OS disk image (.img), not a file system or archive`,
    );
  }
  const diskId = sector0.readUInt32LE(440).toString(16).padStart(8, "0");
  const partitions: MbrPartition[] = [];
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    const type = sector0[e + 4]!;
    if (type === 0) continue;
    const status = sector0[e]!;
    if (status !== 0x00 && status !== 0x80) {
      throw new PibakeError(`${label}: partition ${i + 1} has an invalid status byte ${hexType(status)}: the partition table is damaged`);
    }
    const startSector = sector0.readUInt32LE(e + 8);
    const sectors = sector0.readUInt32LE(e + 12);
    partitions.push({
      number: i + 1,
      type,
      bootable: status === 0x80,
      startSector,
      sectors,
      offset: startSector * SECTOR_SIZE,
      size: sectors * SECTOR_SIZE,
    });
  }
  if (partitions.some((p) => p.type === GPT_PROTECTIVE)) {
    throw new PibakeError(
      `${label}: the disk uses a GPT partition table: pibake needs a Raspberry Pi OS image, which has an MBR (DOS) table with a FAT boot and an ext4 root partition`,
    );
  }
  if (partitions.length === 0) {
    throw new PibakeError(`${label}: the partition table is empty: pibake needs a Raspberry Pi OS image with a FAT boot and an ext4 root partition`);
  }
  return { diskId, partitions };
}

export interface RaspiLayout {
  boot: MbrPartition;
  root: MbrPartition;
}

/**
 * Raspberry Pi OS: partition 1 FAT (boot), partition 2 Linux (root), nothing
 * else, both inside the image, in order, root last (so that it can grow).
 */
export function checkRaspiLayout(table: MbrTable, imageSize: number, label = "image"): RaspiLayout {
  const want = "pibake needs a Raspberry Pi OS image";
  const list = table.partitions.map((p) => `${p.number}: ${hexType(p.type)} ${typeName(p.type)}`).join(", ");
  for (const p of table.partitions) {
    if (EXTENDED_TYPES.has(p.type)) {
      throw new PibakeError(
        `${label}: partition ${p.number} is an extended partition (type ${hexType(p.type)}): ${want} (2 primary partitions, boot and root); this one has ${list}`,
      );
    }
  }
  const boot = table.partitions.find((p) => p.number === 1);
  const root = table.partitions.find((p) => p.number === 2);
  if (!boot) throw new PibakeError(`${label}: there is no partition 1 (it has ${list}): ${want}, whose partition 1 is the FAT boot partition`);
  if (!root) throw new PibakeError(`${label}: there is no partition 2 (it has ${list}): ${want}, whose partition 2 is the ext4 root partition`);
  const extra = table.partitions.filter((p) => p.number > 2);
  if (extra.length > 0) {
    throw new PibakeError(`${label}: it has ${table.partitions.length} partitions (${list}): ${want}, which has exactly 2 (FAT boot, ext4 root)`);
  }
  if (!FAT_TYPES.has(boot.type)) {
    throw new PibakeError(`${label}: partition 1 is not FAT (found type ${hexType(boot.type)}, ${typeName(boot.type)}): ${want}`);
  }
  if (root.type !== 0x83) {
    throw new PibakeError(`${label}: partition 2 is not ext4 (found type ${hexType(root.type)}, ${typeName(root.type)}): ${want}`);
  }
  const totalSectors = Math.floor(imageSize / SECTOR_SIZE);
  for (const p of [boot, root]) {
    if (p.sectors === 0) throw new PibakeError(`${label}: partition ${p.number} is empty (0 sectors): the partition table is damaged`);
    if (p.startSector === 0) throw new PibakeError(`${label}: partition ${p.number} starts at sector 0, over the partition table: the table is damaged`);
    if (p.startSector + p.sectors > totalSectors) {
      throw new PibakeError(
        `${label}: partition ${p.number} ends at byte ${(p.startSector + p.sectors) * SECTOR_SIZE} but the image has only ${imageSize} bytes: the image is truncated (download it again and check its sha256)`,
      );
    }
  }
  if (root.startSector < boot.startSector + boot.sectors) {
    throw new PibakeError(`${label}: partition 2 (root) does not start after partition 1 (boot): ${want}, where the root partition follows the boot partition`);
  }
  return { boot, root };
}

/** A copy of sector 0 with partition `number`'s size changed (LBA fields; CHS set to "beyond 8 GiB", as sfdisk does for large disks). */
export function withPartitionSectors(sector0: Buffer, number: number, sectors: number): Buffer {
  if (number < 1 || number > 4) throw new RangeError(`partition ${number} is not a primary partition`);
  if (!Number.isSafeInteger(sectors) || sectors <= 0 || sectors > 0xffffffff) {
    throw new PibakeError(`a partition of ${sectors} sectors does not fit an MBR (at most 2 TiB)`);
  }
  const out = Buffer.from(sector0.subarray(0, SECTOR_SIZE));
  const e = 446 + 16 * (number - 1);
  if (out[e + 4] === 0) throw new RangeError(`partition ${number} is not in use`);
  const start = out.readUInt32LE(e + 8);
  out.writeUInt32LE(sectors, e + 12);
  writeChs(out, e + 5, start + sectors - 1);
  return out;
}

/** CHS as fdisk writes it with 255 heads and 63 sectors per track, saturated at 1023/254/63. */
function writeChs(buf: Buffer, at: number, lba: number): void {
  const heads = 255;
  const spt = 63;
  let c = Math.floor(lba / (heads * spt));
  let h = Math.floor(lba / spt) % heads;
  let s = (lba % spt) + 1;
  if (c > 1023) {
    c = 1023;
    h = 254;
    s = 63;
  }
  buf[at] = h;
  buf[at + 1] = (s & 0x3f) | ((c >> 2) & 0xc0);
  buf[at + 2] = c & 0xff;
}

export interface Ext4Info {
  /** ext2, ext3 or ext4, by the features the superblock announces. */
  kind: "ext2" | "ext3" | "ext4";
  blockSize: number;
  blocks: number;
  freeBlocks: number;
  label: string;
  uuid: string;
}

/**
 * The ext2/3/4 superblock, from the first 2048 bytes of a partition (it sits
 * at byte 1024). Undefined when there is no ext superblock there.
 */
export function readExtSuperblock(partitionHead: Buffer): Ext4Info | undefined {
  if (partitionHead.length < 2048) return undefined;
  const sb = partitionHead.subarray(1024, 2048);
  if (sb.readUInt16LE(56) !== 0xef53) return undefined;
  const logBlock = sb.readUInt32LE(24);
  if (logBlock > 6) return undefined;
  const blockSize = 1024 << logBlock;
  const incompat = sb.readUInt32LE(96);
  const compat = sb.readUInt32LE(92);
  const is64 = (incompat & 0x80) !== 0;
  const blocks = sb.readUInt32LE(4) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
  const freeBlocks = sb.readUInt32LE(12) + (is64 ? sb.readUInt32LE(0x158) * 2 ** 32 : 0);
  // extents (0x40), 64bit (0x80), flex_bg (0x200) are ext4's; a journal (compat 0x4) without them is ext3.
  const kind = (incompat & (0x40 | 0x80 | 0x200)) !== 0 ? "ext4" : (compat & 0x4) !== 0 ? "ext3" : "ext2";
  const label = sb.subarray(120, 136).toString("latin1").replace(/\0.*$/s, "");
  const u = sb.subarray(104, 120).toString("hex");
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-${u.slice(12, 16)}-${u.slice(16, 20)}-${u.slice(20)}`;
  return { kind, blockSize, blocks, freeBlocks, label, uuid };
}

/** What a FAT boot sector says it is (FAT12/16/32), or undefined when it is not one. */
export function readFatBootSector(sector: Buffer): { kind: "FAT12" | "FAT16" | "FAT32"; label: string } | undefined {
  if (sector.length < 512 || sector[510] !== 0x55 || sector[511] !== 0xaa) return undefined;
  const bytesPerSector = sector.readUInt16LE(11);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) return undefined;
  const fs32 = sector.subarray(82, 90).toString("latin1");
  const fs16 = sector.subarray(54, 62).toString("latin1");
  if (fs32.startsWith("FAT32")) return { kind: "FAT32", label: sector.subarray(71, 82).toString("latin1").trim() };
  if (fs16.startsWith("FAT16")) return { kind: "FAT16", label: sector.subarray(43, 54).toString("latin1").trim() };
  if (fs16.startsWith("FAT12")) return { kind: "FAT12", label: sector.subarray(43, 54).toString("latin1").trim() };
  return undefined;
}

/** The file systems must be what the types claim; says what was found otherwise. */
export function checkFileSystems(
  layout: RaspiLayout,
  bootHead: Buffer,
  rootHead: Buffer,
  label = "image",
): { ext: Ext4Info; fat: { kind: string; label: string } } {
  const fat = readFatBootSector(bootHead);
  if (!fat) {
    throw new PibakeError(
      `${label}: partition 1 has a FAT type (${hexType(layout.boot.type)}) but holds no FAT file system: the image is damaged or not a Raspberry Pi OS image`,
    );
  }
  const ext = readExtSuperblock(rootHead);
  if (!ext) {
    throw new PibakeError(`${label}: partition 2 holds no ext4 file system (no ext superblock at byte 1024): pibake needs a Raspberry Pi OS image`);
  }
  if (ext.kind !== "ext4") {
    throw new PibakeError(`${label}: partition 2 is ${ext.kind}, not ext4: pibake needs a Raspberry Pi OS image, whose root file system is ext4`);
  }
  return { ext, fat };
}
