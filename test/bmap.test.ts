import { execa } from "execa";
import { createHash } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { byteRanges, createBmap, findBmapFor, mappedBytes, parseBmap, readBmap, serializeBmap, type Bmap } from "../src/image/bmap.js";

const hasBmaptool = (await execa("bmaptool", ["--version"], { reject: false })).exitCode === 0;

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), "pibake-bmap-"));
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** A sparse image with data at the given 4 KiB blocks (runs), an odd tail if asked. */
async function makeImage(name: string, size: number, runs: [number, number][]): Promise<string> {
  const file = path.join(dir, name);
  const fh = await fsp.open(file, "w");
  try {
    await fh.truncate(size);
    let seed = 1;
    for (const [first, count] of runs) {
      const len = Math.min(count * 4096, size - first * 4096);
      const buf = Buffer.alloc(len);
      // Deterministic, never an all-zero block.
      for (let i = 0; i < len; i++) buf[i] = ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) | 1;
      await fh.write(buf, 0, len, first * 4096);
    }
  } finally {
    await fh.close();
  }
  return file;
}

function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

describe("createBmap", () => {
  it("maps exactly the non-zero blocks, with per-range sha256", async () => {
    const img = await makeImage("a.img", 8 << 20, [
      [0, 1],
      [10, 3],
      [1000, 24],
      [2047, 1],
    ]);
    const { path: out, bmap } = await createBmap(img);
    expect(out).toBe(`${img}.bmap`);
    expect(bmap.ranges.map((r) => [r.first, r.last])).toEqual([
      [0, 0],
      [10, 12],
      [1000, 1023],
      [2047, 2047],
    ]);
    expect(bmap.mappedBlocksCount).toBe(1 + 3 + 24 + 1);
    expect(bmap.blocksCount).toBe(2048);
    const data = await fsp.readFile(img);
    for (const r of byteRanges(bmap)) expect(r.checksum).toBe(sha256(data.subarray(r.start, r.end)));
    // The written file parses back to the same map, its own checksum included.
    expect(await readBmap(out)).toEqual(bmap);
    // Atomic write: no temporary file left beside it.
    expect((await fsp.readdir(dir)).filter((f) => f.includes(".tmp"))).toEqual([]);
  });

  it("handles an image whose size is not a multiple of the block size", async () => {
    const size = (4 << 20) + 1000;
    const img = await makeImage("odd.img", size, [[1024, 1]]);
    const { bmap } = await createBmap(img);
    expect(bmap.blocksCount).toBe(1025);
    expect(bmap.ranges).toHaveLength(1);
    const [r] = byteRanges(bmap);
    expect(r).toMatchObject({ start: 4 << 20, end: size });
    expect(r!.checksum).toBe(sha256((await fsp.readFile(img)).subarray(4 << 20)));
    expect(mappedBytes(bmap)).toBe(1000);
  });

  it("refuses an empty image", async () => {
    const img = path.join(dir, "empty.img");
    await fsp.writeFile(img, "");
    await expect(createBmap(img)).rejects.toThrow(/empty/);
  });
});

describe("parseBmap", () => {
  const sample: Bmap = {
    version: "2.0",
    imageSize: 40960,
    blockSize: 4096,
    blocksCount: 10,
    mappedBlocksCount: 4,
    checksumType: "sha256",
    ranges: [
      { first: 0, last: 0, checksum: "a".repeat(64) },
      { first: 5, last: 7, checksum: "b".repeat(64) },
    ],
  };

  it("round-trips what serializeBmap writes", () => {
    expect(parseBmap(serializeBmap(sample))).toEqual(sample);
  });

  it("rejects a bmap whose file checksum does not match (an edited file)", () => {
    const text = serializeBmap(sample).replace("5-7", "5-8").replace("<MappedBlocksCount> 4 ", "<MappedBlocksCount> 5 ");
    expect(() => parseBmap(text, "x.bmap")).toThrow(/x\.bmap: the bmap file is corrupt/);
  });

  const broken: [string, (s: string) => string, RegExp][] = [
    ["not XML at all", () => "hello", /not a bmap file/],
    ["a future major version", (s) => s.replace('version="2.0"', 'version="3.0"'), /version 3\.0 is not supported/],
    ["blocks count inconsistent with the size", (s) => s.replace("<BlocksCount> 10 ", "<BlocksCount> 11 "), /inconsistent bmap/],
    ["missing ImageSize", (s) => s.replace(/<ImageSize>[^<]*<\/ImageSize>/, ""), /<ImageSize> is missing/],
  ];
  it.each(broken)("rejects %s", (_name, edit, message) => {
    expect(() => parseBmap(edit(serializeBmap(sample)), "x.bmap")).toThrow(message);
  });

  it("rejects ranges that overlap, run backwards or exceed the image", () => {
    // Checksum-less 1.2 format, so that the edits are not caught by the file checksum first.
    const v12 = (ranges: string, mapped: number) =>
      `<?xml version="1.0" ?><bmap version="1.2"><ImageSize> 40960 </ImageSize><BlockSize> 4096 </BlockSize>` +
      `<BlocksCount> 10 </BlocksCount><MappedBlocksCount> ${mapped} </MappedBlocksCount><BlockMap>${ranges}</BlockMap></bmap>`;
    expect(parseBmap(v12("<Range> 1-2 </Range><Range> 4 </Range>", 3)).ranges).toEqual([
      { first: 1, last: 2 },
      { first: 4, last: 4 },
    ]);
    expect(() => parseBmap(v12("<Range> 1-3 </Range><Range> 3 </Range>", 4))).toThrow(/overlaps/);
    expect(() => parseBmap(v12("<Range> 3-1 </Range>", 0))).toThrow(/backwards/);
    expect(() => parseBmap(v12("<Range> 8-10 </Range>", 3))).toThrow(/beyond the image/);
    expect(() => parseBmap(v12("<Range> 1-2 </Range>", 5))).toThrow(/MappedBlocksCount/);
  });
});

describe("findBmapFor", () => {
  it("looks beside the image the way bmaptool does", async () => {
    const sub = await fsp.mkdtemp(path.join(dir, "find-"));
    const img = path.join(sub, "broker.img.xz");
    await fsp.writeFile(img, "");
    expect(await findBmapFor(img)).toBeUndefined();
    await fsp.writeFile(path.join(sub, "broker.bmap"), "");
    expect(await findBmapFor(img)).toBe(path.join(sub, "broker.bmap"));
    await fsp.writeFile(path.join(sub, "broker.img.bmap"), "");
    expect(await findBmapFor(img)).toBe(path.join(sub, "broker.img.bmap"));
    await fsp.writeFile(path.join(sub, "broker.img.xz.bmap"), "");
    expect(await findBmapFor(img)).toBe(path.join(sub, "broker.img.xz.bmap"));
  });
});

describe("compatibility with bmap-tools", () => {
  it.skipIf(!hasBmaptool)("bmaptool copy accepts a bmap made by createBmap", async () => {
    const img = await makeImage("compat.img", 16 << 20, [
      [0, 2],
      [300, 100],
      [4000, 96],
    ]);
    await createBmap(img);
    const dest = path.join(dir, "compat.copy");
    const r = await execa("bmaptool", ["copy", "--bmap", `${img}.bmap`, img, dest], { reject: false, all: true });
    expect(r.all).not.toMatch(/error|mismatch/i);
    expect(r.exitCode).toBe(0);
    expect(sha256(await fsp.readFile(dest))).toBe(sha256(await fsp.readFile(img)));
  });

  it.skipIf(!hasBmaptool)("bmaptool rejects our bmap when the image does not match it (so it does check our checksums)", async () => {
    const img = await makeImage("compat2.img", 4 << 20, [[10, 5]]);
    await createBmap(img);
    const fh = await fsp.open(img, "r+");
    await fh.write(Buffer.from([0x42]), 0, 1, 10 * 4096 + 7);
    await fh.close();
    const r = await execa("bmaptool", ["copy", "--bmap", `${img}.bmap`, img, path.join(dir, "compat2.copy")], { reject: false, all: true });
    expect(r.exitCode).not.toBe(0);
    expect(r.all).toMatch(/checksum mismatch/);
  });

  it.skipIf(!hasBmaptool)("readBmap reads what bmaptool create writes, with the same ranges as createBmap", async () => {
    const img = await makeImage("theirs.img", 16 << 20, [
      [0, 1],
      [256, 256],
      [3000, 7],
    ]);
    const theirs = path.join(dir, "theirs.bmaptool.bmap");
    const r = await execa("bmaptool", ["create", "-o", theirs, img], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
    const parsed = await readBmap(theirs);
    const ours = (await createBmap(img, { output: path.join(dir, "theirs.ours.bmap") })).bmap;
    expect(parsed.version).toBe("2.0");
    expect(parsed.checksumType).toBe("sha256");
    expect(parsed.imageSize).toBe(16 << 20);
    // The image is sparse where it is zero, so FIEMAP (theirs) and zero tests (ours) agree.
    expect(parsed.ranges).toEqual(ours.ranges);
    expect(existsSync(theirs)).toBe(true);
  });
});
