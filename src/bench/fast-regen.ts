/**
 * `npm run bench`, fast-regen section: on an image pibake built, of the size
 * of Raspberry Pi OS Lite with pibake's packages (at least 2.8 GB raw), a
 * regeneration for a new domain by the fast path (in-process, no root) and by
 * the full path (--full: loop devices, mounts, the chroot), both with
 * --compress none, against one plain read of the image (`cat IMG >
 * /dev/null`), in the same run.
 *
 * The image: PIBAKE_BENCH_PIBAKE_IMAGE names a directory holding image.img,
 * the broker.json it was built from and its state/ (the tests' cached one,
 * $PIBAKE_TEST_CACHE/pibake-built-trixie-*, with the tests' secrets in the
 * environment), or the section builds one from the trixie stand-in first
 * (minutes under qemu-user).
 */
import { execa } from "execa";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../paths.js";
import { formatBytes } from "../ui/output.js";
import { benchConfig, runPibakeBuild, s } from "./common.js";

interface PibakeImage {
  image: string;
  config: Record<string, any>;
  state: string;
}

const GROW = "640M";

async function oneRead(image: string): Promise<number> {
  const t0 = Date.now();
  await execa("cat", [image], { stdout: "ignore", timeout: 600_000 });
  return Date.now() - t0;
}

/** The given image pibake built, or one built now from the stand-in, grown to real size. */
async function pibakeImage(dir: string): Promise<{ img: PibakeImage; note: string }> {
  const given = process.env.PIBAKE_BENCH_PIBAKE_IMAGE;
  if (given) {
    const config = JSON.parse(readFileSync(path.join(given, "broker.json"), "utf8")) as Record<string, any>;
    return { img: { image: path.join(given, "image.img"), config, state: path.join(given, "state") }, note: `from ${given}` };
  }
  const base = (await execa("bash", [path.join(packageRoot, "scripts/fixtures/base-image.sh"), "trixie"], { timeout: 3_600_000 })).stdout.trim();
  const config = benchConfig("home.freemyip.com");
  const cfg = path.join(dir, "first.json");
  writeFileSync(cfg, JSON.stringify(config, null, 2));
  const state = path.join(dir, "first-state");
  const first = await runPibakeBuild(["build", cfg, "--base", base, "--out", path.join(dir, "first"), "--state", state, "--grow", GROW], {});
  return { img: { image: first.image, config, state }, note: `built now in ${s(first.ms)}` };
}

/** One regeneration for a new domain, with its own copy of the state directory. */
async function regenerate(img: PibakeImage, dir: string, name: string, extra: string[]): Promise<{ ms: number; image: string; steps: string }> {
  const state = path.join(dir, `${name}-state`);
  cpSync(img.state, state, { recursive: true });
  const cfg = path.join(dir, `${name}.json`);
  writeFileSync(cfg, JSON.stringify({ ...img.config, tls: { ...img.config.tls, domain: "cabin.freemyip.com" } }, null, 2));
  // Node-RED's versions as recorded: a user's state directory has them from the first build (the tests' cached one was built offline).
  const r = await runPibakeBuild(["build", cfg, "--base", img.image, "--out", path.join(dir, name), "--state", state, ...extra], { PIBAKE_OFFLINE: "1" });
  const timings = (JSON.parse(readFileSync(r.image.replace(/\.img$/, ".manifest.json"), "utf8")) as { timings: Record<string, number> }).timings;
  const steps = Object.entries(timings)
    .filter(([, ms]) => ms >= 50)
    .map(([step, ms]) => `${step} ${s(ms)}`)
    .join(", ");
  return { ms: r.ms, image: r.image, steps };
}

export async function benchFastRegen(): Promise<string[]> {
  if (process.getuid?.() !== 0) return ["skipped: the full path it is compared with needs root (loop devices, mounts, chroot)"];
  if (process.arch !== "arm64" && !existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64"))
    return ["skipped: no qemu-aarch64 in binfmt_misc (sudo apt-get install qemu-user-static binfmt-support)"];
  const dir = mkdtempSync(path.join(os.tmpdir(), "pibake-bench-fast-"));
  try {
    const { img, note } = await pibakeImage(dir);
    const size = statSync(img.image).size;
    const lines = [`image pibake built: ${formatBytes(size)} raw, ${formatBytes(statSync(img.image).blocks * 512)} of data (${note})`];
    const readBefore = await oneRead(img.image);
    const fast = await regenerate(img, dir, "fast", []);
    const readAfter = await oneRead(img.image);
    const full = await regenerate(img, dir, "full", ["--full"]);
    const read = Math.min(readBefore, readAfter);
    lines.push(`one read of the image (cat IMG > /dev/null): ${s(readBefore)} before, ${s(readAfter)} after the fast path`);
    lines.push(`fast path (in-process, --compress none): ${s(fast.ms)} (${fast.steps}), ${(fast.ms / read).toFixed(1)}× one read (target: at most 5 s and 3×)`);
    lines.push(
      `full path (--full, --compress none): ${s(full.ms)} (${full.steps}); the fast path takes ${((fast.ms * 100) / full.ms).toFixed(1)}% of it (${(full.ms / fast.ms).toFixed(1)}× faster)`,
    );
    lines.push(
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, load average ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")} at the end`,
    );
    return lines;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
