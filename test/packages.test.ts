import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render } from "../src/render/index.js";
import { stagePackages } from "../src/render/stage.js";
import { parseAptSizes } from "../src/engines/base-image/room.js";
import { repoRoot, tempDir } from "./helpers/cli.js";

/**
 * What the stage installs for examples/broker.json as shipped (Node-RED on)
 * and with Node-RED off, on both releases: the packages apt resolves for the
 * arm64 archive, by simulation (apt-get -s, here, with the release's own
 * lists from Debian's mirror and arm64 as the architecture), over a Debian
 * base system (what apt installs for the release's required and important
 * packages, without recommends).
 * Raspberry Pi OS Lite has more than that base, so the counts are an upper
 * bound of what a build adds. None of it may be desktop software.
 */
const MIRROR = process.env.PIBAKE_DEBIAN_MIRROR ?? "http://deb.debian.org/debian";
const RELEASES = ["bookworm", "trixie"] as const;
/** Packages that only a desktop needs: an X server's pieces, a GPU driver stack, a video codec, a terminal emulator. */
const DESKTOP = /^(x11-common|x11-utils|x11-xserver-utils|xdg-utils|libgl1-mesa-dri|zutty|xterm|libllvm\d+|libx265-\d+|libgtk-3-0.*|libgdk-pixbuf.*|mesa-.*)$/;
/**
 * The most packages the stage may add over a Debian base: the broker alone, and with Node-RED (Debian's
 * Node.js; npm is its own release, not Debian's npm with its ~380 node-* packages). Measured: trixie 53
 * and 66, bookworm 36 and 48.
 */
const LIMITS = { broker: 80, nodeRed: 100 };

interface AptRoot {
  dir: string;
  sizes: Map<string, number>;
  /** The release's required and important packages: a Debian base system. */
  base: string[];
  /** What apt installs for that base alone. */
  baseInstall: Set<string>;
}

const tmp = tempDir("pibake-packages-");
const roots = new Map<string, AptRoot>();

/** apt with its own root directory: the release's arm64 lists, and a base system as dpkg's status. */
function apt(root: AptRoot, args: string[]) {
  const dir = root.dir;
  return execa(
    "apt-get",
    [
      "-o",
      `Dir=${dir}`,
      "-o",
      `Dir::State::status=${dir}/status`,
      "-o",
      "APT::Architecture=arm64",
      "-o",
      "APT::Architectures::=arm64",
      "-o",
      "Debug::NoLocking=1",
      "-o",
      "Acquire::Retries=3",
      "-o",
      "Acquire::GzipIndexes=false",
      ...args,
    ],
    {
      env: { LC_ALL: "C" },
      timeout: 300_000,
    },
  );
}

async function aptRoot(release: string): Promise<AptRoot> {
  const dir = path.join(tmp.dir, release);
  for (const d of ["etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"])
    mkdirSync(path.join(dir, d), { recursive: true });
  // Metadata only, for a simulation: nothing is downloaded or installed from it.
  writeFileSync(path.join(dir, "etc/apt/sources.list"), `deb [arch=arm64 trusted=yes] ${MIRROR} ${release} main\n`);
  writeFileSync(path.join(dir, "status"), "");
  const root: AptRoot = { dir, sizes: new Map(), base: [], baseInstall: new Set() };
  await apt(root, ["-q", "update"]);
  const lists = path.join(dir, "var/lib/apt/lists");
  const stanzas = readdirSync(lists)
    .filter((f) => f.endsWith("_Packages"))
    .flatMap((f) => readFileSync(path.join(lists, f), "utf8").split(/\n\s*\n/));
  for (const s of stanzas) {
    const name = /^Package: (\S+)/m.exec(s)?.[1];
    if (!name) continue;
    root.sizes.set(name, Number(/^Installed-Size: (\d+)/m.exec(s)?.[1] ?? 0));
    if (/^Priority: (required|important)$/m.test(s)) root.base.push(name);
  }
  root.baseInstall = new Set(await simulate(root, root.base, false));
  expect(root.baseInstall.size).toBeGreaterThan(50);
  return root;
}

/** The names apt would install, on an empty system, for `packages`. */
async function simulate(root: AptRoot, packages: string[], recommends: boolean): Promise<string[]> {
  const r = await apt(root, ["-s", "-q", "install", ...(recommends ? [] : ["--no-install-recommends"]), ...packages]);
  return [...r.stdout.matchAll(/^Inst (\S+)/gm)].map((m) => m[1]!);
}

/** What the stage's packages add to the base (its own packages installed without recommends, as Debian's installer does), and their installed size in KiB. */
async function resolve(root: AptRoot, packages: string[], recommends: boolean): Promise<{ names: string[]; kib: number }> {
  const all = await simulate(root, [...root.base, ...packages], recommends);
  const names = all.filter((n) => !root.baseInstall.has(n)).sort();
  return { names, kib: names.reduce((sum, n) => sum + (root.sizes.get(n) ?? 0), 0) };
}

/** The stage's packages for examples/broker.json, with the release and Node-RED as asked. */
async function examplePackages(release: string, nodeRed: boolean): Promise<string[]> {
  const dir = path.join(tmp.dir, `config-${release}-${nodeRed}`);
  mkdirSync(path.join(dir, "secrets"), { recursive: true });
  const example = JSON.parse(readFileSync(path.join(repoRoot, "examples/broker.json"), "utf8"));
  example.image.release = release;
  if (!nodeRed) example.nodeRed = { enabled: false };
  else expect(example.nodeRed?.enabled ?? true).toBe(true);
  writeFileSync(path.join(dir, "broker.json"), JSON.stringify(example));
  writeFileSync(path.join(dir, "secrets/mqtt-phone.txt"), "Phone-Secret-22cd\n", { mode: 0o600 });
  for (const f of readdirSync(path.join(repoRoot, "examples")).filter((f) => f.endsWith(".txt"))) cpSync(path.join(repoRoot, "examples", f), path.join(dir, f));
  const env = {
    PIBAKE_USER_PASSWORD: "User-Secret-9f3c",
    PIBAKE_MQTT_SENSORS_PASSWORD: "Sensors-Secret-71ab",
    FREEMYIP_TOKEN: "DdnsToken5e6f7a8b",
    PIBAKE_NODE_RED_PASSWORD: "NodeRed-Secret-11aa",
  };
  const { model } = loadConfig(path.join(dir, "broker.json"), env);
  return stagePackages(await render(model, await prepareSecrets(model, new StateDir(path.join(dir, "state")))));
}

describe("the packages the stage adds (apt's simulation against Debian's arm64 archive)", () => {
  beforeAll(async () => {
    for (const release of RELEASES) roots.set(release, await aptRoot(release));
  }, 600_000);

  afterAll(() => tmp.cleanup());

  for (const release of RELEASES) {
    it(`${release}: no desktop package, a bounded count, with Node-RED and without`, async () => {
      const root = roots.get(release)!;
      const figures: string[] = [];
      for (const nodeRed of [false, true]) {
        const packages = await examplePackages(release, nodeRed);
        expect(packages).toContain("mosquitto");
        expect(packages.includes("nodejs")).toBe(nodeRed);
        const lean = await resolve(root, packages, false);
        const withRecommends = await resolve(root, packages, true);
        figures.push(
          `${nodeRed ? "with" : "without"} Node-RED: ${lean.names.length} packages, ${Math.round(lean.kib / 1024)} MiB installed (with recommends: ${withRecommends.names.length}, ${Math.round(withRecommends.kib / 1024)} MiB)`,
        );
        expect(
          lean.names.filter((n) => DESKTOP.test(n)),
          "desktop packages",
        ).toEqual([]);
        expect(lean.names.length).toBeLessThanOrEqual(nodeRed ? LIMITS.nodeRed : LIMITS.broker);
        // Every package the stage names is installed by apt (or already in the base).
        for (const p of packages) expect(lean.names.includes(p) || root.baseInstall.has(p), p).toBe(true);
        if (release === "bookworm") expect(lean.names).toContain("libio-socket-ssl-perl");
      }
      // The build grows the image from apt's own figures: this apt's wording (apt 2; the image's trixie apt 3 is read in the --base build test) read back as the packages' Installed-Size.
      const packages = await examplePackages(release, true);
      const asked = await apt(root, ["-q", "install", "--assume-no", "--no-install-recommends", ...packages]).catch((e: { stdout: string }) => e);
      const sizes = parseAptSizes(asked.stdout);
      const names = [...(await simulate(root, packages, false))];
      const kib = names.reduce((sum, n) => sum + (root.sizes.get(n) ?? 0), 0);
      expect(sizes.installBytes / (kib * 1024)).toBeGreaterThan(0.98);
      expect(sizes.installBytes / (kib * 1024)).toBeLessThan(1.02);
      expect(sizes.downloadBytes).toBeGreaterThan(sizes.installBytes / 10);
      console.log(`${release} over a Debian base (required and important): ${figures.join("; ")}`);
    });
  }
});
