import { execa } from "execa";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  compressionOfMagic,
  detectCompression,
  gzipExactSize,
  openImageReader,
  pickZipImage,
  probeImage,
  readZipDirectory,
  type ImageReader,
} from "../src/image/compression.js";

const have = async (cmd: string, arg = "--version") => (await execa(cmd, [arg], { reject: false })).exitCode === 0;
const tools = { xz: await have("xz"), zstd: await have("zstd"), zip: await have("zip", "-v"), gzip: await have("gzip") };

let dir: string;
let raw: string;
let rawSum: string;
const SIZE = (6 << 20) + 512; // Several read chunks, and not a round number.

beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), "pibake-compression-"));
  raw = path.join(dir, "disk.img");
  // Half random, half zeros: like an image, and it compresses.
  const data = Buffer.concat([randomBytes(SIZE / 2 - 256), Buffer.alloc(SIZE / 2 + 256)]);
  await fsp.writeFile(raw, data);
  rawSum = createHash("sha256").update(data).digest("hex");
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function drain(r: ImageReader): Promise<{ sum: string; n: number }> {
  const h = createHash("sha256");
  let n = 0;
  for await (const c of r.stream as AsyncIterable<Buffer>) {
    h.update(c);
    n += c.length;
  }
  await r.close();
  return { sum: h.digest("hex"), n };
}

/** The processes this one started whose command line names file, from /proc. */
async function childrenReading(file: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fsp.readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const parent = /^PPid:\s+(\d+)$/m.exec(await fsp.readFile(`/proc/${entry}/status`, "utf8"))?.[1];
      if (Number(parent) === process.pid && (await fsp.readFile(`/proc/${entry}/cmdline`, "utf8")).split("\0").includes(file)) pids.push(Number(entry));
    } catch {
      // It ended while the list was read.
    }
  }
  return pids;
}

/** This process's file descriptors open on file, from /proc/self/fd. */
async function descriptorsOn(file: string): Promise<string[]> {
  const target = await fsp.realpath(file);
  const fds: string[] = [];
  for (const fd of await fsp.readdir("/proc/self/fd")) {
    try {
      if ((await fsp.readlink(`/proc/self/fd/${fd}`)) === target) fds.push(fd);
    } catch {
      // The descriptor of the readdir itself, closed by now.
    }
  }
  return fds;
}

describe("detectCompression", () => {
  it("recognises the magic bytes", () => {
    expect(compressionOfMagic(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0, 0]))).toBe("xz");
    expect(compressionOfMagic(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe("zstd");
    expect(compressionOfMagic(Buffer.from([0x1f, 0x8b, 8]))).toBe("gzip");
    expect(compressionOfMagic(Buffer.from("PK\x03\x04"))).toBe("zip");
    expect(compressionOfMagic(Buffer.from([0xfa, 0xb8]))).toBe("none");
    expect(compressionOfMagic(Buffer.alloc(0))).toBe("none");
  });

  it.skipIf(!tools.xz)("goes by content, not by name", async () => {
    const xz = path.join(dir, "renamed.img");
    await execa("sh", ["-c", `xz -c -0 "${raw}" > "${xz}"`]);
    expect(await detectCompression(xz)).toBe("xz");
  });

  it("refuses a file named .xz that is not xz data", async () => {
    const fake = path.join(dir, "fake.img.xz");
    await fsp.writeFile(fake, Buffer.alloc(100));
    await expect(detectCompression(fake)).rejects.toThrow(/fake\.img\.xz is named like xz data but does not start like it/);
  });

  it("says when the image does not exist", async () => {
    await expect(detectCompression(path.join(dir, "nope.img"))).rejects.toThrow(/does not exist/);
  });
});

describe("openImageReader", () => {
  it("reads a raw image as is, with its size", async () => {
    const r = await openImageReader(raw);
    expect(r.compression).toBe("none");
    expect(r.size).toBe(SIZE);
    expect(await drain(r)).toEqual({ sum: rawSum, n: SIZE });
  });

  const cases: [string, keyof typeof tools, string, string][] = [
    ["gzip", "gzip", "disk.img.gz", `gzip -c "RAW" > "OUT"`],
    ["xz", "xz", "disk.img.xz", `xz -T0 -c "RAW" > "OUT"`],
    ["zstd", "zstd", "disk.img.zst", `zstd -q -c "RAW" > "OUT"`],
    ["zip", "zip", "disk.zip", `cd "DIR" && zip -q -j "OUT" "RAW" README.txt`],
  ];
  for (const [kind, tool, name, cmd] of cases) {
    it.skipIf(!tools[tool])(`decompresses ${kind} while reading, and knows the size up front`, async () => {
      const out = path.join(dir, name);
      await fsp.writeFile(path.join(dir, "README.txt"), "not the image\n");
      await execa("sh", ["-c", cmd.replaceAll("RAW", raw).replaceAll("OUT", out).replaceAll("DIR", dir)]);
      const info = await probeImage(out);
      expect(info.compression).toBe(kind);
      expect(info.size ?? info.sizeHint).toBe(SIZE);
      if (kind === "zip") expect(info.entry).toBe("disk.img");
      const r = await openImageReader(out);
      expect(await drain(r)).toEqual({ sum: rawSum, n: SIZE });
    });
  }

  it.skipIf(!tools.xz)("turns a corrupt xz file into a stream error, not a short image", async () => {
    const good = path.join(dir, "good.img.xz");
    await execa("sh", ["-c", `xz -c -0 "${raw}" > "${good}"`]);
    const data = await fsp.readFile(good);
    const bad = path.join(dir, "bad.img.xz");
    await fsp.writeFile(bad, data.subarray(0, Math.floor(data.length / 2)));
    const r = await openImageReader(bad);
    await expect(drain(r)).rejects.toThrow(/cannot decompress .*bad\.img\.xz/);
  });

  it.skipIf(!tools.xz)("close() stops the decompressor early", async () => {
    const xz = path.join(dir, "early.img.xz");
    await execa("sh", ["-c", `xz -c -0 "${raw}" > "${xz}"`]);
    const r = await openImageReader(xz);
    for await (const _ of r.stream) break;
    const running = await childrenReading(xz);
    expect(running, "the xz process decompressing the file, while it reads").toHaveLength(1);
    await r.close();
    // Exited and reaped: a process that was only killed, or left a zombie, would still have its /proc entry.
    expect(existsSync(`/proc/${running[0]}`), `/proc/${running[0]} after close()`).toBe(false);
    expect(await childrenReading(xz)).toEqual([]);
    await r.close();
  });

  it.skipIf(!tools.zip)("reads Zip64 archives' central directory", async () => {
    const z = path.join(dir, "z64.zip");
    // -fz forces Zip64 records even for a small file.
    await execa("sh", ["-c", `cd "${dir}" && zip -q -fz -j "${z}" "${raw}"`]);
    const entries = await readZipDirectory(z);
    expect(entries).toEqual([expect.objectContaining({ name: "disk.img", size: SIZE })]);
    expect(await drain(await openImageReader(z))).toEqual({ sum: rawSum, n: SIZE });
  });

  it.skipIf(!tools.zip)("reads a stored member whose name has pattern characters", async () => {
    const odd = path.join(dir, "odd");
    await fsp.mkdir(odd, { recursive: true });
    await fsp.copyFile(raw, path.join(odd, "disk*[1]?.img"));
    const z = path.join(dir, "odd.zip");
    await execa("sh", ["-c", `cd "${odd}" && zip -q -0 "${z}" "disk*[1]?.img"`]);
    expect((await probeImage(z)).entry).toBe("disk*[1]?.img");
    expect(await drain(await openImageReader(z))).toEqual({ sum: rawSum, n: SIZE });
  });

  it.skipIf(!tools.zip)("turns a corrupt zip member into a stream error, not a wrong image", async () => {
    const z = path.join(dir, "stored.zip");
    await execa("sh", ["-c", `cd "${dir}" && zip -q -0 -j "${z}" "${raw}"`]);
    const data = await fsp.readFile(z);
    data[data.length >> 1]! ^= 0xff; // inside the stored image: the sizes still match, the CRC-32 does not
    const bad = path.join(dir, "bad.zip");
    await fsp.writeFile(bad, data);
    await expect(drain(await openImageReader(bad))).rejects.toThrow(/cannot decompress .*bad\.zip: disk\.img fails its CRC-32 check/);

    const deflated = path.join(dir, "deflated.zip");
    await execa("sh", ["-c", `cd "${dir}" && zip -q -j "${deflated}" "${raw}"`]);
    const d = await fsp.readFile(deflated);
    d.fill(0x55, 200, 4000); // the start of the deflate stream
    const broken = path.join(dir, "broken.zip");
    await fsp.writeFile(broken, d);
    await expect(drain(await openImageReader(broken))).rejects.toThrow(/cannot decompress .*broken\.zip/);
  });

  it.skipIf(!tools.zip)("close() stops reading a zip member early", async () => {
    const z = path.join(dir, "early.zip");
    await execa("sh", ["-c", `cd "${dir}" && zip -q -j "${z}" "${raw}"`]);
    const r = await openImageReader(z);
    for await (const _ of r.stream) break;
    expect(await descriptorsOn(z), "the zip open while its member is read").not.toEqual([]);
    await r.close();
    expect(await descriptorsOn(z)).toEqual([]);
    await r.close();
  });

  it("says when a .zip is not a zip archive", async () => {
    const fake = path.join(dir, "fake.zip");
    await fsp.writeFile(fake, Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(100)]));
    await expect(probeImage(fake)).rejects.toThrow(/fake\.zip is not a readable zip archive/);
  });
});

describe("zip members and gzip sizes", () => {
  const e = (name: string) => ({ name, size: 1, compressedSize: 1, method: 8 });
  it("picks the one .img, or the only file", () => {
    expect(pickZipImage([e("a/"), e("a/readme.txt"), e("a/x.IMG")], "f.zip").name).toBe("a/x.IMG");
    expect(pickZipImage([e("only.bin")], "f.zip").name).toBe("only.bin");
    expect(() => pickZipImage([e("a.img"), e("b.img")], "f.zip")).toThrow(/f\.zip holds 2 \.img files \(a\.img, b\.img\)/);
    expect(() => pickZipImage([e("a.txt"), e("b.txt")], "f.zip")).toThrow(/holds no \.img file/);
  });

  it("trusts gzip's ISIZE only where no larger size could hide behind it", () => {
    expect(gzipExactSize(1000, 100)).toBe(1000);
    expect(gzipExactSize(5 << 20, 1 << 20)).toBe(5 << 20);
    // 500 MB could inflate past 4 GiB, so the modulo-4-GiB field proves nothing.
    expect(gzipExactSize(1 << 30, 500_000_000)).toBeUndefined();
  });
});
