/**
 * pibake flash for real: loop devices stand in for SD cards (this needs root
 * and losetup; without them these tests are reported skipped).
 */
import { execa, type Options } from "execa";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough, Writable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { PibakeError } from "../src/errors.js";
import { byteRanges, createBmap, readBmap, type ByteRange } from "../src/image/bmap.js";
import { listBlockDevices, mountsOf } from "../src/flash/devices.js";
import { runFlash, type FlashArgs, type FlashIO } from "../src/flash/flash.js";
import { chooseIndex } from "../src/flash/prompt.js";
import { createPrompter } from "../src/ui/prompt.js";
import { closeTarget, openTarget, syncTarget, verifyTarget, VerifyError, writeImage } from "../src/flash/writer.js";
import { createOutput } from "../src/ui/output.js";
import { minimalMbr } from "./helpers/mbr.js";

const MiB = 1 << 20;
const T: Options = { timeout: 60_000, reject: false, stdin: "ignore" };
const isRoot = process.getuid?.() === 0;
const hasLosetup = (await execa("losetup", ["--version"], T)).exitCode === 0 && existsSync("/dev/loop-control");
const canLoop = isRoot && hasLosetup;
const hasSfdisk = (await execa("sfdisk", ["--version"], T)).exitCode === 0;
const hasMkfs = (await execa("mkfs.ext4", ["-V"], T)).exitCode === 0;
const canMount = canLoop && hasMkfs && (await fsp.readFile("/proc/filesystems", "utf8").catch(() => "")).includes("ext4");

let dir: string;
let image: string; // 64 MiB, MBR, random data runs, with image.bmap
let imageData: Buffer;
const loops: string[] = [];
const mounts: string[] = [];

/**
 * A sparse image with random data in a few places and a partition table:
 * sfdisk's (when `table` and sfdisk is there), else a minimal one written last.
 */
async function makeImage(file: string, size: number, runs: [number, number][], table = true): Promise<Buffer> {
  await fsp.writeFile(file, "");
  await fsp.truncate(file, size);
  if (table && hasSfdisk) {
    const r = await execa("sfdisk", ["-q", file], { ...T, stdin: undefined, input: "label: dos\nstart=2048, size=32768, type=c\nstart=34816, type=83\n" });
    expect(r.exitCode, String(r.stderr)).toBe(0);
  }
  const fh = await fsp.open(file, "r+");
  for (const [offMiB, lenKiB] of runs) await fh.write(randomBytes(lenKiB * 1024), 0, lenKiB * 1024, offMiB * MiB);
  if (!(table && hasSfdisk)) await fh.write(minimalMbr(), 0, 512, 0);
  await fh.close();
  return fsp.readFile(file);
}

async function attach(backing: string): Promise<string> {
  const r = await execa("losetup", ["-f", "--show", backing], T);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  const dev = String(r.stdout).trim();
  loops.push(dev);
  return dev;
}

/** A loop device over a new file of `size` bytes filled with `fill`. */
async function card(name: string, size: number, fill = 0xa5, head?: Buffer): Promise<{ dev: string; backing: string }> {
  const backing = path.join(dir, name);
  const data = Buffer.alloc(size, fill);
  head?.copy(data);
  await fsp.writeFile(backing, data);
  return { dev: await attach(backing), backing };
}

async function readDevice(dev: string, length: number): Promise<Buffer> {
  const fh = await fsp.open(dev, "r");
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function captureIO(over: Partial<FlashIO> = {}): FlashIO & { text: () => string } {
  let text = "";
  const sink = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  }) as unknown as NodeJS.WriteStream;
  return {
    out: createOutput({ stdout: sink, stderr: sink, plain: true }),
    prompt: sink,
    input: new PassThrough(),
    interactive: false,
    live: false,
    text: () => text,
    ...over,
  };
}

/** A digest of the device's start, or undefined where even root may not read it (a sandbox's system disk). */
async function fingerprint(dev: string, length: number): Promise<string | undefined> {
  try {
    return sha(await readDevice(dev, length));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EPERM") return undefined;
    throw err;
  }
}

/** Run the command and return its refusal; the target must be unchanged. */
async function refused(args: FlashArgs, dev: string, length: number): Promise<PibakeError> {
  const before = await fingerprint(dev, length);
  const err = await runFlash(args, captureIO()).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PibakeError);
  expect(await fingerprint(dev, length)).toBe(before);
  return err as PibakeError;
}

beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), "pibake-flash-"));
  image = path.join(dir, "broker.img");
  imageData = await makeImage(image, 64 * MiB, [
    [1, 300],
    [2, 1024],
    [17, 64],
    [40, 2048],
    [63, 1024],
  ]);
  await createBmap(image);
});

afterEach(async () => {
  // Even after a failed test: unmount, then detach.
  for (const m of mounts.splice(0).reverse()) await execa("umount", [m], T);
  for (const l of loops.splice(0).reverse()) {
    // Partitions added with partx (ours, or flash's own) may outlive the loop device's detach: drop them first.
    await execa("partx", ["-d", l], T);
    await execa("losetup", ["-d", l], T);
  }
});

afterAll(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe("writing and verifying", () => {
  it.skipIf(!canLoop)("flashes an image with its bmap onto a loop device: mapped ranges byte for byte, the rest untouched", async () => {
    const { dev } = await card("card1", 96 * MiB);
    const io = captureIO();
    const summary = await runFlash({ image, device: dev, yes: true, force: true }, io);
    expect(summary).toMatchObject({ kind: "block", usedBmap: true, verified: true, imageSize: 64 * MiB });
    const bmap = await readBmap(`${image}.bmap`);
    const ranges = byteRanges(bmap);
    expect(summary.written).toBe(ranges.reduce((n, r) => n + r.end - r.start, 0));
    expect(summary.written).toBeLessThan(8 * MiB);

    const onCard = await readDevice(dev, 96 * MiB);
    let pos = 0;
    for (const r of [...ranges, { start: 64 * MiB, end: 96 * MiB } as ByteRange]) {
      // Unmapped space keeps what the card had: only mapped ranges were written.
      expect(
        onCard.subarray(pos, r.start).every((b) => b === 0xa5),
        `gap before ${r.start}`,
      ).toBe(true);
      if (r.start < 64 * MiB) expect(onCard.subarray(r.start, r.end).equals(imageData.subarray(r.start, r.end)), `range at ${r.start}`).toBe(true);
      pos = r.end;
    }
    expect(io.text()).toMatch(/Wrote .* to \/dev\/loop\d+ in/);
    expect(io.text()).toMatch(/Verified .*matches the image/);
    expect(io.text()).toMatch(new RegExp(`Done: ${dev} can be removed\\.`));
  });

  it.skipIf(!canLoop)("writes the whole image without a bmap, and the card then equals the image (cmp)", async () => {
    const { dev } = await card("card2", 80 * MiB);
    const s = await runFlash({ image, device: dev, yes: true, force: true, bmap: false }, captureIO());
    expect(s).toMatchObject({ usedBmap: false, written: 64 * MiB, verified: true });
    const r = await execa("cmp", ["-n", String(64 * MiB), image, dev], T);
    expect(r.exitCode, String(r.stdout)).toBe(0);
  });

  it.skipIf(!canLoop)("decompresses .xz while writing, finding the bmap beside the .img name", async () => {
    const xz = path.join(dir, "broker.img.xz");
    await execa("xz", ["-T0", "-0", "-k", "-f", image], T);
    expect(existsSync(xz)).toBe(true);
    const { dev } = await card("card3", 64 * MiB, 0);
    const io = captureIO();
    const s = await runFlash({ image: xz, device: dev, yes: true, force: true }, io);
    expect(s.usedBmap).toBe(true);
    expect(io.text()).toMatch(/\(xz, 64\.0 MiB, broker\.img\.bmap maps/);
    expect(sha(await readDevice(dev, 64 * MiB))).toBe(sha(imageData));
  });

  it("writes to a regular file (a copy), gzip-compressed source, holes left as holes", async () => {
    const gz = path.join(dir, "copy-src.img.gz");
    await execa("sh", ["-c", `gzip -1 -c "${image}" > "${gz}"`], T);
    const copy = path.join(dir, "copy.img");
    const s = await runFlash({ image: gz, device: copy, bmap: `${image}.bmap` }, captureIO());
    expect(s.kind).toBe("file");
    expect(sha(await fsp.readFile(copy))).toBe(sha(imageData));
    // Overwriting it again needs consent.
    await expect(runFlash({ image, device: copy }, captureIO())).rejects.toThrow(/no terminal to confirm on: pass --yes/);
  });

  it.skipIf(!canLoop)("an image whose size is not a multiple of 4 KiB: the tail goes through the cache, with and without bmap", async () => {
    const odd = path.join(dir, "odd.img");
    const size = 8 * MiB + 1536;
    const data = await makeImage(
      odd,
      size,
      [
        [0, 64],
        [8, 1],
      ],
      false,
    );
    await createBmap(odd);
    for (const bmap of [true, false]) {
      const { dev } = await card(`odd-${bmap}`, 16 * MiB, 0);
      const s = await runFlash({ image: odd, device: dev, yes: true, force: true, bmap }, captureIO());
      expect(s.verified).toBe(true);
      expect(sha(await readDevice(dev, size))).toBe(sha(data));
    }
    const copy = path.join(dir, "odd.copy");
    await runFlash({ image: odd, device: copy }, captureIO());
    expect(sha(await fsp.readFile(copy))).toBe(sha(data));
  });

  it.skipIf(!canLoop)("verification catches a byte corrupted behind the flasher's back, and names the range", async () => {
    const { dev, backing } = await card("card4", 64 * MiB, 0);
    const bmap = await readBmap(`${image}.bmap`);
    const ranges = byteRanges(bmap);
    const t = await openTarget(dev, "block");
    try {
      const res = await writeImage({ source: { kind: "file", path: image }, target: t, ranges, blockSize: bmap.blockSize, hash: true });
      await syncTarget(t);
      await verifyTarget(t, res.segments); // Clean so far.
      const victim = ranges.find((r) => r.start === 40 * MiB)!; // The 2 MiB run at 40 MiB.
      const at = victim.start + 123_457;
      const fh = await fsp.open(backing, "r+");
      await fh.write(Buffer.from([imageData[at]! ^ 0xff]), 0, 1, at);
      await fh.sync();
      await fh.close();
      const err = await verifyTarget(t, res.segments).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VerifyError);
      const first = victim.start / 4096;
      const last = victim.end / 4096 - 1;
      expect((err as VerifyError).message).toBe(
        `verification failed: ${dev} differs from the image in bmap range ${first}-${last}, bytes ${victim.start}-${victim.end - 1} (40.0 MiB to 42.0 MiB); ` +
          `the card does not hold a faithful copy: flash it again, and if this repeats, use another card`,
      );
    } finally {
      await closeTarget(t);
    }
  });

  it.skipIf(!canLoop)("without a bmap, a mismatch is narrowed to the 4 MiB chunk that holds it", async () => {
    const { dev, backing } = await card("card5", 64 * MiB, 0);
    const t = await openTarget(dev, "block");
    try {
      const res = await writeImage({ source: { kind: "file", path: image }, target: t, hash: true });
      await syncTarget(t);
      const at = 17 * MiB + 5;
      const fh = await fsp.open(backing, "r+");
      await fh.write(Buffer.from([imageData[at]! ^ 1]), 0, 1, at);
      await fh.close();
      await expect(verifyTarget(t, res.segments)).rejects.toThrow(`differs from the image in bytes ${16 * MiB}-${20 * MiB - 1} (16.0 MiB to 20.0 MiB)`);
    } finally {
      await closeTarget(t);
    }
  });

  it.skipIf(!canLoop)("a bmap that belongs to another image is an error, not a silent bad copy", async () => {
    const other = path.join(dir, "other.img");
    await makeImage(other, 64 * MiB, [
      [1, 300],
      [2, 1024],
      [17, 64],
      [40, 2048],
      [63, 1024],
    ]);
    const { dev } = await card("card6", 64 * MiB, 0);
    await expect(runFlash({ image: other, device: dev, bmap: `${image}.bmap`, yes: true, force: true }, captureIO())).rejects.toThrow(
      /the image does not match its bmap in bmap range .*: the \.bmap belongs to another image \(pass --no-bmap/,
    );
  });
});

describe("refusals: clear message, nothing written", () => {
  it.skipIf(!canMount)("a device with a mounted partition, then --unmount", async () => {
    // A card holding the image's partition table; this kernel does not scan loop devices, partx adds the partitions.
    const { dev } = await card("mounted", 80 * MiB, 0, imageData.subarray(0, 1 * MiB));
    const px = await execa("partx", ["-u", dev], T);
    expect(px.exitCode, String(px.stderr)).toBe(0);
    expect(await fsp.readFile("/proc/partitions", "utf8")).toContain(`${path.basename(dev)}p2`);
    const part = `${dev}p2`;
    expect((await execa("mkfs.ext4", ["-q", "-F", part], T)).exitCode).toBe(0);
    const mnt = await fsp.mkdtemp(path.join(dir, "mnt-"));
    expect((await execa("mount", [part, mnt], T)).exitCode).toBe(0);
    mounts.push(mnt);

    const err = await refused({ image, device: dev, yes: true, force: true }, dev, 80 * MiB);
    expect(err.message).toBe(`${dev} has mounted partitions (${part} on ${mnt}): unmount them or pass --unmount`);
    expect(err.exitCode).toBe(1);

    const io = captureIO();
    // Without the bmap, so that the old file system is overwritten everywhere and the card equals the image.
    await runFlash({ image, device: dev, yes: true, force: true, unmount: true, bmap: false }, io);
    expect(io.text()).toContain(`Unmounted ${part} from ${mnt}`);
    expect(io.text()).toMatch(/to be unmounted first/);
    mounts.pop();
    expect((await fsp.readFile("/proc/mounts", "utf8")).includes(` ${mnt} `)).toBe(false);
    expect(sha(await readDevice(dev, 64 * MiB))).toBe(sha(imageData));
  });

  it.skipIf(!canLoop)("a device smaller than the image", async () => {
    const { dev } = await card("small", 32 * MiB);
    const err = await refused({ image, device: dev, yes: true, force: true }, dev, 32 * MiB);
    expect(err.message).toBe(`${dev} (32.0 MiB) is smaller than the image (64.0 MiB): use a larger card`);
    expect(err.exitCode).toBe(1);
  });

  it.skipIf(!canLoop)("a disk that is not removable, without --force", async () => {
    const { dev } = await card("fixed", 64 * MiB);
    const err = await refused({ image, device: dev, yes: true }, dev, 64 * MiB);
    expect(err.message).toBe(`${dev} is not a removable disk but a loop device: check the name, and pass --force if you really mean to overwrite it`);
  });

  it.skipIf(!canLoop)("the confirmation: 'n' writes nothing, 'y' writes", async () => {
    const { dev } = await card("ask", 64 * MiB, 0);
    const no = new PassThrough();
    no.end("n\n");
    const io = captureIO({ interactive: true, input: no });
    const before = sha(await readDevice(dev, 64 * MiB));
    await expect(runFlash({ image, device: dev, force: true }, io)).rejects.toThrow("cancelled: nothing was written");
    expect(io.text()).toContain(`Everything on ${dev} will be destroyed.`);
    expect(io.text()).toContain(`Write the image to ${dev}? [y/N] `);
    expect(sha(await readDevice(dev, 64 * MiB))).toBe(before);

    const yes = new PassThrough();
    yes.end("y\n");
    await runFlash({ image, device: dev, force: true }, captureIO({ interactive: true, input: yes }));
    expect(sha(await readDevice(dev, 64 * MiB))).toBe(sha(imageData));
  });

  it.skipIf(!isRoot)("the disk the system runs from, even with --force", async () => {
    const devs = await listBlockDevices();
    const sys = devs.find((d) => mountsOf(d).some((m) => m.mountpoint === "/"));
    if (!sys) return; // No block device holds / (e.g. overlay root): nothing to refuse here.
    const err = await refused({ image, device: sys.path, yes: true, force: true, unmount: true }, sys.path, 1 * MiB);
    expect(err.message).toMatch(new RegExp(`^${sys.path} holds the running system \\(.*/ on /dev/.*\\): refusing to overwrite it; choose another device$`));
  });

  it("a device that does not exist", async () => {
    const err = await runFlash({ image, device: "/dev/pibake-no-such-card", yes: true }, captureIO()).catch((e: unknown) => e);
    expect((err as Error).message).toBe(
      `/dev/pibake-no-such-card does not exist: check the name, or run "pibake flash IMAGE" without a device to list removable ones`,
    );
    // A name that leads nowhere is a usage error; a card that cannot be written (read-only, too small) is not.
    expect(err).toMatchObject({ exitCode: 2 });
  });

  it("the image itself as the target", async () => {
    const err = await runFlash({ image, device: image, yes: true }, captureIO()).catch((e: unknown) => e);
    expect((err as Error).message).toBe(`${image} is the image itself: choose another target`);
    expect(err).toMatchObject({ exitCode: 2 });
    expect(sha(await fsp.readFile(image))).toBe(sha(imageData));
  });

  it("no device and no terminal: usage error", async () => {
    const err = await runFlash({ image }, captureIO()).catch((e: unknown) => e);
    expect(err).toMatchObject({ exitCode: 2, message: expect.stringMatching(/^no DEVICE given, and no terminal to choose one on/) });
  });
});

describe("only a disk image is written", () => {
  /** Flash `source` onto a file that already holds something: refused with exit 2, before any question, the file unchanged. */
  async function refusedSource(source: string): Promise<PibakeError> {
    const target = path.join(dir, "precious.bin");
    await fsp.writeFile(target, "the card's old contents\n");
    const input = new PassThrough();
    input.end("y\n");
    const io = captureIO({ interactive: true, input });
    const err = await runFlash({ image: source, device: target }, io).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PibakeError);
    expect(err).toMatchObject({ exitCode: 2 });
    expect(io.text()).not.toContain("Write the image");
    expect(await fsp.readFile(target, "utf8")).toBe("the card's old contents\n");
    return err as PibakeError;
  }

  it("refuses a text file, and a new target is not even created", async () => {
    const notes = path.join(dir, "notes.txt");
    await fsp.writeFile(notes, "not an image\n".repeat(100));
    expect((await refusedSource(notes)).message).toBe(
      `${notes} is not a disk image: its first sector holds no partition table (no MBR or GPT signature); ` +
        `flash the .img (or .img.xz, .img.zst, .img.gz, .zip) that pibake build made. Nothing was written`,
    );
    const fresh = path.join(dir, "fresh.img");
    await expect(runFlash({ image: notes, device: fresh, yes: true }, captureIO())).rejects.toThrow(/is not a disk image/);
    expect(existsSync(fresh)).toBe(false);
  });

  it("refuses the files delivered beside an image, and names the image", async () => {
    const deploy = await fsp.mkdtemp(path.join(dir, "deploy-"));
    const base = path.join(deploy, "broker-home.example.com-2026-01-10");
    await fsp.writeFile(`${base}.img.xz`, "");
    await fsp.writeFile(`${base}.img.xz.sha256`, `${"0".repeat(64)}  broker-home.example.com-2026-01-10.img.xz\n`);
    await fsp.copyFile(`${image}.bmap`, `${base}.img.bmap`);
    await fsp.writeFile(`${base}.manifest.json`, JSON.stringify({ pibake: "0.1.0" }, null, 2));
    await fsp.writeFile(`${base}.log`, "== step: render\n".repeat(200));
    for (const [file, what] of [
      [`${base}.img.xz.sha256`, "the checksum file"],
      [`${base}.img.bmap`, "the block map"],
      [`${base}.manifest.json`, "the build manifest"],
      [`${base}.log`, "the build log"],
    ] as const) {
      const message = (await refusedSource(file)).message;
      expect(message.startsWith(`${file} is not a disk image: `), message).toBe(true);
      expect(message.endsWith(`; it is ${what} of ${base}.img.xz: flash that instead. Nothing was written`), message).toBe(true);
    }
  });

  it("reads a compressed source's start through the decompressor: refused when it is not an image", async () => {
    const notes = path.join(dir, "notes.img");
    await fsp.writeFile(notes, "still not an image\n".repeat(100));
    await execa(
      "sh",
      [
        "-c",
        `xz -0 -c "${notes}" > "${notes}.xz" && zstd -q -c "${notes}" > "${notes}.zst" && gzip -c "${notes}" > "${notes}.gz" && cd "${dir}" && zip -q notes.zip notes.img`,
      ],
      T,
    );
    for (const [file, kind] of [
      [`${notes}.xz`, "xz"],
      [`${notes}.zst`, "zstd"],
      [`${notes}.gz`, "gzip"],
      [path.join(dir, "notes.zip"), "zip, member notes.img"],
    ] as const) {
      expect((await refusedSource(file)).message, file).toContain(
        `${file} is not a disk image once decompressed (${kind}): its first sector holds no partition table`,
      );
    }
  });

  it("refuses a file system's boot sector on its own (55 aa, but no partition entries)", async () => {
    const vbr = path.join(dir, "boot-partition.img");
    const sector = Buffer.alloc(8 * MiB);
    sector.write("This is not a bootable disk.  Please insert a bootable floppy and\r\npress any key to try again ... \r\n", 430, "latin1");
    sector[510] = 0x55;
    sector[511] = 0xaa;
    await fsp.writeFile(vbr, sector);
    expect((await refusedSource(vbr)).message).toContain("its first sector ends like a boot sector but holds no valid partition table");
  });

  it("still writes compressed images (zstd, zip) and a GPT disk", async () => {
    await execa("sh", ["-c", `zstd -q -f -c "${image}" > "${image}.zst" && cd "${dir}" && zip -q -1 broker.zip broker.img`], T);
    for (const source of [`${image}.zst`, path.join(dir, "broker.zip")]) {
      const copy = path.join(dir, `copy-of-${path.basename(source)}`);
      await runFlash({ image: source, device: copy, bmap: false }, captureIO());
      expect(sha(await fsp.readFile(copy)), source).toBe(sha(imageData));
      await fsp.rm(copy);
    }
    if (!hasSfdisk) return;
    const gpt = path.join(dir, "gpt.img");
    await fsp.writeFile(gpt, "");
    await fsp.truncate(gpt, 8 * MiB);
    expect((await execa("sfdisk", ["-q", gpt], { ...T, stdin: undefined, input: "label: gpt\nstart=2048, size=4096\n" })).exitCode).toBe(0);
    const copy = path.join(dir, "gpt.copy");
    await runFlash({ image: gpt, device: copy, bmap: false }, captureIO());
    expect(sha(await fsp.readFile(copy))).toBe(sha(await fsp.readFile(gpt)));
  });
});

describe("choosing a device on a terminal", () => {
  it("asks again until the answer is a listed number", async () => {
    const input = new PassThrough();
    input.end("x\n9\n2\n");
    let shown = "";
    const out = new Writable({
      write(c, _e, cb) {
        shown += String(c);
        cb();
      },
    });
    const p = createPrompter({ input, output: out });
    expect(await chooseIndex(p, out, 3)).toBe(1);
    p.close();
    expect(shown.match(/Write to which device\? \[1-3, q to cancel\] /g)).toHaveLength(3);
    expect(shown).toContain("Please answer a number from 1 to 3, or q.");
  });

  it.skipIf(!isRoot)("lists the removable disks lsblk reports (or says there are none)", async () => {
    const input = new PassThrough();
    input.end("q\n");
    const io = captureIO({ interactive: true, input });
    const err = (await runFlash({ image }, io).catch((e: unknown) => e)) as Error;
    // Either there is a card to choose from (and q cancels), or the message says to insert one.
    expect(err.message).toMatch(/^(cancelled: nothing was written|no removable disk found: insert the SD card)/);
    if (err.message.startsWith("cancelled")) expect(io.text()).toMatch(/Removable disks:\n {2}1\) \/dev\//);
  });
});

describe("the command line", () => {
  let root: string;
  let bin: string;
  beforeAll(async () => {
    // A private build of the CLI, so that the real process (exit codes, signals) is exercised.
    root = await fsp.mkdtemp(path.join(os.tmpdir(), "pibake-cli-"));
    await execa("npx", ["tsc", "-p", path.resolve("tsconfig.json"), "--outDir", path.join(root, "dist")], { ...T, timeout: 300_000 });
    expect(existsSync(path.join(root, "dist", "cli.js"))).toBe(true);
    await fsp.copyFile("package.json", path.join(root, "package.json"));
    await fsp.symlink(path.resolve("node_modules"), path.join(root, "node_modules"));
    await fsp.mkdir(path.join(root, "bin"));
    await fsp.copyFile("bin/pibake.js", path.join(root, "bin", "pibake.js"));
    bin = path.join(root, "bin", "pibake.js");
  });
  afterAll(async () => {
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  it("exit code 2 and a one-line message for a device that does not exist, no stack trace", async () => {
    const r = await execa("node", [bin, "flash", image, "/dev/pibake-no-such-card", "--yes"], T);
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toBe(
      `pibake: /dev/pibake-no-such-card does not exist: check the name, or run "pibake flash IMAGE" without a device to list removable ones`,
    );
  });

  it("a source that is not a disk image: exit 2, before anything is asked or written", async () => {
    const notes = path.join(dir, "notimg.txt");
    await fsp.writeFile(notes, "hello\n");
    const dest = path.join(dir, "notimg.copy");
    const r = await execa("node", [bin, "flash", notes, dest, "--yes"], T);
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toBe(
      `pibake: ${notes} is not a disk image: it is 6 bytes long, shorter than one sector; flash the .img (or .img.xz, .img.zst, .img.gz, .zip) that pibake build made. Nothing was written`,
    );
    expect(String(r.stdout)).toBe("");
    expect(existsSync(dest)).toBe(false);
  });

  it("exit code 2 for bad usage", async () => {
    const none = await execa("node", [bin, "flash"], T);
    expect(none.exitCode).toBe(2);
    const noDevice = await execa("node", [bin, "flash", image], T);
    expect(noDevice.exitCode).toBe(2);
    expect(String(noDevice.stderr)).toMatch(/^pibake: no DEVICE given, and no terminal to choose one on/);
    const missing = await execa("node", [bin, "flash", path.join(dir, "missing.img"), path.join(dir, "x.copy")], T);
    expect(missing.exitCode).toBe(2);
    expect(String(missing.stderr)).toBe(`pibake: image ${path.join(dir, "missing.img")} does not exist`);
  });

  it("Ctrl-C stops cleanly and says the target is incomplete", async () => {
    const big = path.join(dir, "big.img");
    await fsp.writeFile(big, minimalMbr());
    await fsp.truncate(big, 1024 * MiB);
    const dest = path.join(dir, "big.copy");
    const child = execa("node", [bin, "flash", big, dest, "--no-bmap"], { ...T, buffer: true });
    // Interrupt as soon as the plan is printed: writing starts right after.
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no plan printed within 30 s")), 30_000);
      child.stdout!.on("data", (d: Buffer) => {
        if (String(d).includes("Target:")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill("SIGINT");
    const r = await child;
    expect(r.exitCode).toBe(130);
    expect(String(r.stderr)).toMatch(
      /pibake: interrupted by SIGINT: .*big\.copy is incomplete \(.* of 1\.0 GiB written\) and will not boot: flash it again before using it/,
    );
    expect(String(r.stderr)).not.toMatch(/\n\s+at /);
    await fsp.rm(dest, { force: true });
    await fsp.rm(big, { force: true });
  });
});
