/**
 * `npm run bench`, flash section: the same image onto the same loop-backed
 * target with dd, bmaptool and pibake flash (bmap on/off, verification
 * on/off), round-robin, median of a few runs, ratios against dd.
 */
import { execa } from "execa";
import { randomFillSync } from "node:crypto";
import { promises as fsp } from "node:fs";
import os from "node:os";
import path from "node:path";
import { withCleanup, type CleanupScope } from "../cleanup.js";
import { byteRanges, createBmap, type Bmap } from "../image/bmap.js";
import { packageRoot } from "../paths.js";
import { formatBytes } from "../ui/output.js";

const MiB = 1 << 20;

interface Method {
  name: string;
  cmd: string;
  args: string[];
}

async function available(cmd: string, args: string[]): Promise<boolean> {
  const r = await execa(cmd, args, { reject: false, stdin: "ignore", timeout: 10_000 });
  return r.exitCode === 0;
}

/**
 * A synthetic Raspberry Pi-like image: MBR with a boot and a root partition,
 * a full-ish boot partition, large file extents in the root, and small
 * metadata blocks every 8 MiB (as ext4's block groups leave), zeros elsewhere.
 */
async function makeBenchImage(file: string, sizeMiB: number): Promise<void> {
  await fsp.writeFile(file, "");
  await fsp.truncate(file, sizeMiB * MiB);
  const table = "label: dos\nstart=8192, size=524288, type=c\nstart=532480, type=83\n";
  const r = await execa("sfdisk", ["-q", file], { input: table, reject: false, timeout: 30_000 });
  if (r.exitCode !== 0) throw new Error(`sfdisk failed: ${String(r.stderr)}`);
  const fh = await fsp.open(file, "r+");
  try {
    const buf = Buffer.alloc(4 * MiB);
    const put = async (offset: number, len: number) => {
      for (let done = 0; done < len; done += buf.length) {
        const n = Math.min(buf.length, len - done);
        randomFillSync(buf, 0, n);
        await fh.write(buf, 0, n, offset + done);
      }
    };
    await put(4 * MiB, 48 * MiB); // boot files
    for (let off = 300 * MiB; off + 16 * MiB <= sizeMiB * MiB; off += 40 * MiB) await put(off, 16 * MiB); // root extents
    for (let off = 260 * MiB; off < sizeMiB * MiB; off += 8 * MiB) await put(off, 16 * 1024); // metadata
  } finally {
    await fh.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** One bench run: the image, the target it is written to, and what each method took. */
interface FlashBench {
  readonly sizeMiB: number;
  readonly runs: number;
  readonly image: string;
  readonly bmap: Bmap;
  readonly bmapMs: number;
  /** Bytes the bmap maps, and their share of the image. */
  readonly mapped: number;
  readonly share: number;
  readonly dev: string;
  readonly directIo: boolean;
  readonly methods: Method[];
  /** Each method's median wall time, in milliseconds. */
  medians?: Map<string, number>;
}

export async function benchFlash(): Promise<string[]> {
  const sizeMiB = Number(process.env.PIBAKE_BENCH_FLASH_MIB ?? 1024);
  const runs = Number(process.env.PIBAKE_BENCH_RUNS ?? 3);
  if (process.getuid?.() !== 0) return ["skipped: needs root for loop devices"];
  if (!(await available("losetup", ["--version"]))) return ["skipped: losetup is not installed"];
  if (!(await available("sfdisk", ["--version"]))) return ["skipped: sfdisk is not installed"];
  const haveBmaptool = await available("bmaptool", ["--version"]);

  return withCleanup(async (scope) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "pibake-bench-flash-"));
    scope.defer(() => fsp.rm(dir, { recursive: true, force: true }), "removing the bench files");
    const image = path.join(dir, "bench.img");
    const measured = await imageAndBmap(image, sizeMiB);
    const target = await attachTarget(dir, sizeMiB, scope);
    const b: FlashBench = { sizeMiB, runs, image, ...measured, ...target, methods: flashMethods(image, target.dev, haveBmaptool) };
    await timeMethods(b, scope);
    return report(b);
  });
}

/** The synthetic image, its bmap and how long createBmap took. */
async function imageAndBmap(image: string, sizeMiB: number): Promise<{ bmap: Bmap; bmapMs: number; mapped: number; share: number }> {
  await makeBenchImage(image, sizeMiB);
  const t0 = performance.now();
  const { bmap } = await createBmap(image);
  const bmapMs = performance.now() - t0;
  const mapped = byteRanges(bmap).reduce((n, r) => n + r.end - r.start, 0);
  return { bmap, bmapMs, mapped, share: mapped / bmap.imageSize };
}

/** One target for every run: a loop device over a preallocated file, bypassing the host's cache where possible. */
async function attachTarget(dir: string, sizeMiB: number, scope: CleanupScope): Promise<{ dev: string; directIo: boolean }> {
  const backing = path.join(dir, "card.bin");
  await execa("fallocate", ["-l", String((sizeMiB + 64) * MiB), backing], { timeout: 60_000 });
  let directIo = true;
  let lo = await execa("losetup", ["-f", "--show", "--direct-io=on", backing], { reject: false, timeout: 30_000 });
  if (lo.exitCode !== 0) {
    directIo = false;
    lo = await execa("losetup", ["-f", "--show", backing], { timeout: 30_000 });
  }
  const dev = String(lo.stdout).trim();
  scope.defer(async () => {
    // flash makes the kernel add the image's partitions, which can outlive the detach: drop them first.
    await execa("partx", ["-d", dev], { reject: false, timeout: 30_000 });
    await execa("losetup", ["-d", dev], { reject: false, timeout: 30_000 });
  }, `detaching ${dev}`);
  return { dev, directIo };
}

/** dd first (the ratios are against it), then bmaptool where installed, then pibake flash with bmap and verification on and off. */
function flashMethods(image: string, dev: string, haveBmaptool: boolean): Method[] {
  const pibake = path.join(packageRoot, "bin", "pibake.js");
  const flash = (extra: string[]) => [pibake, "flash", image, dev, "--yes", "--force", ...extra];
  return [
    { name: "dd bs=4M conv=fsync", cmd: "dd", args: [`if=${image}`, `of=${dev}`, "bs=4M", "conv=fsync", "status=none"] },
    ...(haveBmaptool ? [{ name: "bmaptool copy (bmap)", cmd: "bmaptool", args: ["-q", "copy", "--bmap", `${image}.bmap`, image, dev] }] : []),
    { name: "pibake flash --no-bmap --no-verify", cmd: process.execPath, args: flash(["--no-bmap", "--no-verify"]) },
    { name: "pibake flash --no-verify (bmap)", cmd: process.execPath, args: flash(["--no-verify"]) },
    { name: "pibake flash --no-bmap (verify)", cmd: process.execPath, args: flash(["--no-bmap"]) },
    { name: "pibake flash (bmap, verify)", cmd: process.execPath, args: flash([]) },
  ];
}

/** Every method `runs` times, round-robin; the median of each. */
async function timeMethods(b: FlashBench, scope: CleanupScope): Promise<void> {
  // Every method starts with the image in the page cache, as after a build.
  await execa("cat", [b.image], { stdout: "ignore", timeout: 120_000 });
  const times = new Map<string, number[]>(b.methods.map((m) => [m.name, []]));
  for (let i = 0; i < b.runs; i++) {
    for (const m of b.methods) {
      scope.throwIfInterrupted();
      await execa("blockdev", ["--flushbufs", b.dev], { reject: false, timeout: 30_000 });
      const t = performance.now();
      const r = await execa(m.cmd, m.args, { reject: false, stdin: "ignore", timeout: 600_000, cancelSignal: scope.signal });
      const ms = performance.now() - t;
      if (r.exitCode !== 0) throw new Error(`${m.name} failed: ${String(r.stderr).trim() || r.shortMessage}`);
      times.get(m.name)!.push(ms);
    }
  }
  b.medians = new Map([...times].map(([k, v]) => [k, median(v)]));
}

/** The report's lines: the image and target, each method's time, rate and ratio to dd, and whether the goals are met. */
function report(b: FlashBench): string[] {
  const { bmap, methods, share } = b;
  const med = b.medians!;
  const dd = med.get(methods[0]!.name)!;
  const width = Math.max(...methods.map((m) => m.name.length));
  const lines = [
    `image: ${formatBytes(bmap.imageSize)} synthetic (MBR, boot + root partition), ${formatBytes(b.mapped)} mapped ` +
      `(${(share * 100).toFixed(0)}%) in ${bmap.ranges.length} bmap ranges; createBmap took ${(b.bmapMs / 1000).toFixed(1)} s`,
    `target: ${b.dev} over a preallocated file in ${os.tmpdir()} (loop direct-io ${b.directIo ? "on" : "off"}), the same for every run`,
    `median wall time of ${b.runs} runs (whole process), effective rate = image size / time, ratio = time / dd's time:`,
  ];
  for (const m of methods) {
    const ms = med.get(m.name)!;
    const rate = formatBytes((bmap.imageSize * 1000) / ms);
    lines.push(`  ${m.name.padEnd(width)}  ${(ms / 1000).toFixed(2).padStart(6)} s  ${rate.padStart(10)}/s  ${(ms / dd).toFixed(2)}`);
  }
  const noBmap = med.get("pibake flash --no-bmap --no-verify")! / dd;
  const withBmap = med.get("pibake flash --no-verify (bmap)")! / dd;
  lines.push(
    `goal, no bmap: at least as fast as dd: ratio ${noBmap.toFixed(2)} ${noBmap <= 1 ? "<= 1, met" : "> 1, NOT met"}`,
    `goal, bmap: faster than dd by the unmapped share: ratio ${withBmap.toFixed(2)} ${withBmap <= share ? "<=" : ">"} mapped share ${share.toFixed(2)}, ${withBmap <= share ? "met" : "NOT met"}`,
  );
  return lines;
}
