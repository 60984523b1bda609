/**
 * `npm run bench`, pi-gen section: with PIBAKE_PIGEN_DIR pointing to a pi-gen
 * checkout (arm64 branch), a full `pibake build` (--clean, in a cache of its
 * own) and then a regeneration for a new domain, in the same run, and their
 * ratio. On machines without Raspberry Pi's archive this uses the test
 * scaffolding of test/fixtures/pi-gen (a Debian-only base stage; losetup and
 * mount wrappers for kernels without loop partition scanning or vfat), so the
 * figures are for that base, not for pi-gen's own stage0-2.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../paths.js";
import { mountsBelow } from "../host/mounts.js";
import { releaseBelow } from "../host/release.js";
import { benchConfig, runPibakeBuild, s } from "./common.js";

export async function benchPiGen(): Promise<string[]> {
  const piGen = process.env.PIBAKE_PIGEN_DIR;
  if (!piGen) return ["skipped: set PIBAKE_PIGEN_DIR to a pi-gen checkout (arm64 branch) to measure a full build against a regeneration"];
  if (process.getuid?.() !== 0) return ["skipped: pi-gen's native build needs root"];
  const scaffolding = path.join(packageRoot, "test/fixtures/pi-gen");
  if (!existsSync(scaffolding)) return ["skipped: test/fixtures/pi-gen is not in this checkout"];

  // pi-gen refuses paths with spaces; /var/tmp keeps its several GiB off a tmpfs /tmp.
  const dir = mkdtempSync(path.join("/var/tmp", "pibake-bench-pigen-"));
  try {
    const env = { PATH: `${path.join(scaffolding, "bin")}:${process.env.PATH}`, XDG_CACHE_HOME: path.join(dir, "cache") };
    const state = path.join(dir, "state");
    const run = (domain: string, extra: string[]) => {
      const config = path.join(dir, `${domain}.json`);
      writeFileSync(config, JSON.stringify(benchConfig(domain), null, 2));
      const args = [
        "build",
        config,
        "--pi-gen",
        piGen,
        "--base-stages",
        path.join(scaffolding, "debian-base"),
        "--out",
        path.join(dir, domain),
        "--state",
        state,
        ...extra,
      ];
      return runPibakeBuild(args, env);
    };
    const full = await run("home.freemyip.com", ["--clean"]);
    const regen = await run("cabin.freemyip.com", []);
    if (!/regenerating:/.test(regen.output)) throw new Error(`the second build did not regenerate:\n${regen.output.split("\n").slice(-15).join("\n")}`);
    return [
      `base: test/fixtures/pi-gen/debian-base in place of stage0-2 (Debian trixie arm64 via pi-gen's bootstrap, under qemu-user)`,
      `full build (--clean): ${s(full.ms)}`,
      `regeneration for a new domain: ${s(regen.ms)}`,
      `ratio: the regeneration takes ${((regen.ms * 100) / full.ms).toFixed(1)}% of the full build (${(full.ms / regen.ms).toFixed(1)}× faster)`,
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, load average ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")} at the end`,
    ];
  } finally {
    // Never a recursive delete through a mount pi-gen left (its chroots bind /dev).
    await releaseBelow(dir);
    if (mountsBelow(dir).length === 0) rmSync(dir, { recursive: true, force: true });
  }
}
