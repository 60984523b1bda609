import { describe, expect, it, afterAll } from "vitest";
import { execa } from "execa";
import { openSync, closeSync, writeSync } from "node:fs";
import path from "node:path";
import { tempDir } from "./helpers/cli.js";
import { readAt } from "./helpers/image.js";
import {
  checkFileSystems,
  checkRaspiLayout,
  parseMbr,
  readExtSuperblock,
  readFatBootSector,
  withPartitionSectors,
  type MbrTable,
} from "../src/image/partitions.js";

/**
 * MBR parsing and the Raspberry Pi OS layout checks. Tables are written by
 * sfdisk and file systems by mkfs (the real programs), and what pibake reads
 * is compared with what `sfdisk --json` reads.
 */
const tmp = tempDir("pibake-parts-");
afterAll(() => tmp.cleanup());

const MiB = 1024 * 1024;
let n = 0;

async function disk(table: string, sizeMiB = 64): Promise<string> {
  const file = path.join(tmp.dir, `disk${n++}.img`);
  await execa("truncate", ["-s", `${sizeMiB}M`, file]);
  await execa("sfdisk", ["--quiet", "--no-reread", "--no-tell-kernel", file], { input: table });
  return file;
}

const raspiTable = (p2type = "83", extra = "") =>
  `label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\nstart=8192, size=16384, type=c\nstart=24576, type=${p2type}\n${extra}`;

describe("parseMbr", () => {
  it("reads what sfdisk wrote, as sfdisk reads it back", async () => {
    const file = await disk(raspiTable());
    const t = parseMbr(readAt(file, 0, 512), "disk.img");
    const sf = JSON.parse((await execa("sfdisk", ["--json", file])).stdout).partitiontable;
    expect(t.diskId).toBe(sf.id.replace(/^0x/, ""));
    expect(t.partitions.map((p) => ({ start: p.startSector, size: p.sectors, type: p.type.toString(16) }))).toEqual(
      sf.partitions.map((p: { start: number; size: number; type: string }) => ({ start: p.start, size: p.size, type: p.type })),
    );
    expect(t.partitions[0]).toMatchObject({ number: 1, offset: 8192 * 512, size: 16384 * 512 });
    expect(t.partitions[1]).toMatchObject({ number: 2, offset: 24576 * 512, size: 64 * MiB - 24576 * 512 });
  });

  it("says what a file without a partition table is", () => {
    expect(() => parseMbr(Buffer.alloc(100), "x.img")).toThrow(/x\.img: the file is too short to hold a partition table/);
    expect(() => parseMbr(Buffer.alloc(512), "x.img")).toThrow(/x\.img: no MBR partition table .*not a file system or archive/);
  });

  it("recognises a GPT disk and says what pibake needs instead", async () => {
    const file = await disk("label: gpt\n\nsize=16M, type=L\n");
    expect(() => parseMbr(readAt(file, 0, 512), "gpt.img")).toThrow(
      /gpt\.img: the disk uses a GPT partition table: pibake needs a Raspberry Pi OS image, which has an MBR/,
    );
  });

  it("refuses an empty table", async () => {
    const file = await disk("label: dos\n");
    expect(() => parseMbr(readAt(file, 0, 512), "empty.img")).toThrow(/the partition table is empty/);
  });
});

describe("checkRaspiLayout", () => {
  const table = async (t: string, size = 64 * MiB): Promise<[MbrTable, number]> => [parseMbr(readAt(await disk(t), 0, 512), "base.img"), size];

  it("accepts Raspberry Pi OS's layout: FAT boot, Linux root after it", async () => {
    const [t, size] = await table(raspiTable());
    const { boot, root } = checkRaspiLayout(t, size, "base.img");
    expect(boot.type).toBe(0x0c);
    expect(root.type).toBe(0x83);
  });

  it.each<{ name: string; sfdisk: string; size?: number; error: string | RegExp }>([
    {
      name: "names a root partition of the wrong type, with its type byte",
      sfdisk: raspiTable("7"),
      error: "base.img: partition 2 is not ext4 (found type 0x07, NTFS/exFAT): pibake needs a Raspberry Pi OS image",
    },
    {
      name: "names a boot partition that is not FAT",
      sfdisk: "label: dos\n\nstart=8192, size=16384, type=83\nstart=24576, type=83\n",
      error: "base.img: partition 1 is not FAT (found type 0x83, Linux): pibake needs a Raspberry Pi OS image",
    },
    {
      name: "refuses more partitions than Raspberry Pi OS has, listing them",
      sfdisk: "label: dos\n\nstart=8192, size=16384, type=c\nstart=24576, size=16384, type=83\nstart=40960, type=82\n",
      error: /has 3 partitions \(1: 0x0c FAT, 2: 0x83 Linux, 3: 0x82 Linux swap\).*exactly 2/,
    },
    { name: "refuses a single partition", sfdisk: "label: dos\n\nstart=8192, type=c\n", error: /there is no partition 2/ },
    {
      name: "says a truncated image is truncated",
      sfdisk: raspiTable(),
      size: 32 * MiB,
      error: /partition 2 ends at byte 67108864 but the image has only 33554432 bytes: the image is truncated \(download it again and check its sha256\)/,
    },
  ])("$name", async ({ sfdisk, size, error }) => {
    const [t, diskSize] = await table(sfdisk);
    expect(() => checkRaspiLayout(t, size ?? diskSize, "base.img")).toThrow(error);
  });
});

describe("withPartitionSectors", () => {
  it("changes the root partition's size so that sfdisk reads the new size, and nothing else", async () => {
    const file = await disk(raspiTable(), 64);
    await execa("truncate", ["-s", "128M", file]);
    const before = readAt(file, 0, 512);
    const root = parseMbr(before).partitions[1]!;
    const newSectors = (128 * MiB) / 512 - root.startSector;
    const after = withPartitionSectors(before, 2, newSectors);
    const fd = openSync(file, "r+");
    writeSync(fd, after, 0, 512, 0);
    closeSync(fd);
    const sf = JSON.parse((await execa("sfdisk", ["--json", file])).stdout).partitiontable;
    expect(sf.partitions[1].size).toBe(newSectors);
    expect(sf.partitions[0].size).toBe(16384);
    expect(sf.id).toBe("0x1234abcd");
    // Only the size and CHS end fields of entry 2 differ.
    const diff = [...after].map((b, i) => (b !== before[i] ? i : -1)).filter((i) => i >= 0);
    expect(diff.every((i) => i >= 446 + 16 + 5 && i < 446 + 32)).toBe(true);
    expect(() => withPartitionSectors(before, 3, 10)).toThrow(/not in use/);
  });
});

describe("file system signatures", () => {
  it("reads ext4's superblock (size, free blocks, label) and tells ext2 from ext4", async () => {
    const f4 = path.join(tmp.dir, "fs4.img");
    await execa("truncate", ["-s", "32M", f4]);
    await execa("mkfs.ext4", ["-q", "-F", "-L", "rootfs", "-b", "4096", f4]);
    const sb = readExtSuperblock(readAt(f4, 0, 2048))!;
    expect(sb).toMatchObject({ kind: "ext4", blockSize: 4096, blocks: 8192, label: "rootfs" });
    const dumpe2fs = (await execa("dumpe2fs", ["-h", f4])).stdout;
    expect(sb.freeBlocks).toBe(Number(/Free blocks:\s+(\d+)/.exec(dumpe2fs)![1]));
    expect(sb.uuid).toBe(/Filesystem UUID:\s+(\S+)/.exec(dumpe2fs)![1]);

    const f2 = path.join(tmp.dir, "fs2.img");
    await execa("truncate", ["-s", "8M", f2]);
    await execa("mkfs.ext2", ["-q", "-F", f2]);
    expect(readExtSuperblock(readAt(f2, 0, 2048))?.kind).toBe("ext2");
    expect(readExtSuperblock(Buffer.alloc(2048))).toBeUndefined();
  });

  it("recognises FAT32 and FAT16 boot sectors", async () => {
    const f = path.join(tmp.dir, "fat.img");
    await execa("mkfs.vfat", ["-F", "32", "-n", "BOOTFS", "-C", f, String(64 * 1024)]);
    expect(readFatBootSector(readAt(f, 0, 512))).toEqual({ kind: "FAT32", label: "BOOTFS" });
    const g = path.join(tmp.dir, "fat16.img");
    await execa("mkfs.vfat", ["-F", "16", "-n", "SMALL", "-C", g, String(16 * 1024)]);
    expect(readFatBootSector(readAt(g, 0, 512))?.kind).toBe("FAT16");
    expect(readFatBootSector(Buffer.alloc(512))).toBeUndefined();
  });

  it("says when a partition's contents do not match its type", async () => {
    const file = await disk(raspiTable());
    const t = parseMbr(readAt(file, 0, 512));
    const layout = checkRaspiLayout(t, 64 * MiB, "base.img");
    expect(() => checkFileSystems(layout, Buffer.alloc(512), Buffer.alloc(2048), "base.img")).toThrow(
      /partition 1 has a FAT type \(0x0c\) but holds no FAT file system/,
    );
    const fat = path.join(tmp.dir, "f.img");
    await execa("mkfs.vfat", ["-F", "32", "-C", fat, String(64 * 1024)]);
    expect(() => checkFileSystems(layout, readAt(fat, 0, 512), Buffer.alloc(2048), "base.img")).toThrow(/partition 2 holds no ext4 file system/);
    const e2 = path.join(tmp.dir, "e2.img");
    await execa("truncate", ["-s", "8M", e2]);
    await execa("mkfs.ext2", ["-q", "-F", e2]);
    expect(() => checkFileSystems(layout, readAt(fat, 0, 512), readAt(e2, 0, 2048), "base.img")).toThrow(
      "base.img: partition 2 is ext2, not ext4: pibake needs a Raspberry Pi OS image, whose root file system is ext4",
    );
  });
});
