/**
 * `npm run bench`, base-image section: on one base image (the test fixture
 * that stands in for Raspberry Pi OS Lite, scripts/fixtures/base-image.sh),
 * the time of a first `pibake build --base` (packages installed under
 * qemu-user on non-ARM hosts), of a regeneration for a new domain from the
 * image that build produced, their ratio, and the produced image's size
 * against the base's; then a first build with Node-RED on, as
 * examples/broker.json has it: packages and installed size added, beside the
 * base's and the build without Node-RED. The builds run the CLI as a user would.
 */
import { execa } from "execa";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../paths.js";
import { formatBytes } from "../ui/output.js";
import { benchConfig, runPibakeBuild, s } from "./common.js";

function allocated(file: string): number {
  return statSync(file).blocks * 512;
}

async function zstdSize(file: string): Promise<number> {
  const r = await execa("bash", ["-c", 'zstd -T0 -3 -q -c -- "$1" | wc -c', "bash", file], { timeout: 1_200_000 });
  return Number(r.stdout.trim());
}

interface Built {
  ms: number;
  image: string;
  manifest: {
    image: { rawSize: number; mappedBytes: number; sha256: string };
    timings: Record<string, number>;
    engine: Record<string, unknown> & {
      packagesAdded: { count: number; installedBytes: number; base?: { count: number; installedBytes: number } };
      rootGrownBy: number;
    };
  };
}

/** What a first build added to the base, beside the base's own figures. */
function added(b: Built): string {
  const a = b.manifest.engine.packagesAdded;
  const base = a.base ? `; the base: ${a.base.count} packages, ${formatBytes(a.base.installedBytes)}` : "";
  return `${a.count} packages, ${formatBytes(a.installedBytes)} installed added${base}; root grown by ${formatBytes(b.manifest.engine.rootGrownBy)}`;
}

async function build(configFile: string, base: string, out: string, state: string): Promise<Built> {
  const { ms, image } = await runPibakeBuild(["build", configFile, "--base", base, "--out", out, "--state", state], {});
  const manifest = JSON.parse(readFileSync(image.replace(/\.img$/, ".manifest.json"), "utf8")) as Built["manifest"];
  return { ms, image, manifest };
}

function steps(t: Record<string, number>): string {
  return ["prepare base", "packages", "overlay", "finalize", "bmap", "compress"]
    .filter((k) => t[k] !== undefined)
    .map((k) => `${k} ${s(t[k]!)}`)
    .join(", ");
}

export async function benchBaseImage(): Promise<string[]> {
  if (process.getuid?.() !== 0) return ["skipped: pibake build --base needs root (loop devices, mounts, chroot)"];
  if (process.arch !== "arm64" && !existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64"))
    return ["skipped: no qemu-aarch64 in binfmt_misc (sudo apt-get install qemu-user-static binfmt-support)"];
  const fixture = path.join(packageRoot, "scripts/fixtures/base-image.sh");
  if (!existsSync(fixture)) return ["skipped: scripts/fixtures/base-image.sh is not in this checkout"];

  const lines: string[] = [];
  const t0 = Date.now();
  const base = (await execa("bash", [fixture, "trixie"], { timeout: 3_600_000 })).stdout.trim();
  const fixtureMs = Date.now() - t0;
  const dir = mkdtempSync(path.join(os.tmpdir(), "pibake-bench-base-"));
  try {
    const state = path.join(dir, "state");
    const c1 = path.join(dir, "first.json");
    const c2 = path.join(dir, "second.json");
    writeFileSync(c1, JSON.stringify(benchConfig("home.freemyip.com"), null, 2));
    writeFileSync(c2, JSON.stringify(benchConfig("cabin.freemyip.com"), null, 2));

    lines.push(
      `base: ${path.basename(base)} (Raspberry Pi OS Lite stand-in, trixie arm64), ${formatBytes(statSync(base).size)} raw, ${formatBytes(allocated(base))} allocated` +
        (fixtureMs > 60_000 ? ` (built in ${s(fixtureMs)}, now cached)` : ""),
    );
    const first = await build(c1, base, path.join(dir, "out1"), state);
    lines.push(
      `first --base build, Node-RED off: ${s(first.ms)} (${steps(first.manifest.timings)}; packages ${(first.manifest.engine.packagesInstalled as string[]).join(", ")})`,
    );
    lines.push(`  added: ${added(first)}`);
    const regen = await build(c2, first.image, path.join(dir, "out2"), state);
    lines.push(`regeneration for a new domain, from the first build's image: ${s(regen.ms)} (${steps(regen.manifest.timings)})`);
    lines.push(`ratio: the regeneration takes ${((regen.ms * 100) / first.ms).toFixed(1)}% of the first build (${(first.ms / regen.ms).toFixed(1)}× faster)`);

    const [zBase, zImage] = [await zstdSize(base), await zstdSize(regen.image)];
    const m = regen.manifest.image;
    lines.push(
      `size: produced image ${formatBytes(m.rawSize)} raw, ${formatBytes(m.mappedBytes)} of data (bmap), ${formatBytes(allocated(regen.image))} allocated; ` +
        `base ${formatBytes(statSync(base).size)} raw, ${formatBytes(allocated(base))} allocated`,
    );
    lines.push(
      `compressed (zstd -3): produced ${formatBytes(zImage)}, base ${formatBytes(zBase)} (+${formatBytes(zImage - zBase)}: mosquitto, ddclient and their dependencies)`,
    );
    const c3 = path.join(dir, "node-red.json");
    writeFileSync(c3, JSON.stringify(benchConfig("home.freemyip.com", true), null, 2));
    const withNodeRed = await build(c3, base, path.join(dir, "out3"), path.join(dir, "state-node-red"));
    lines.push(
      `first --base build, Node-RED on (as examples/broker.json): ${s(withNodeRed.ms)} (${steps(withNodeRed.manifest.timings)}), ${((withNodeRed.ms * 100) / first.ms).toFixed(0)}% of the build without it`,
    );
    lines.push(`  added: ${added(withNodeRed)}`);
    lines.push(
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, load average ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")} at the end`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return lines;
}
