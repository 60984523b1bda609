import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { existsSync, lstatSync, readdirSync, readlinkSync } from "node:fs";
import path from "node:path";
import { FIXTURE_TIMEOUT_MS, pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { countInImage, mountRoot } from "./helpers/image.js";
import { hostCanaries, LINKED_DIRS, LINKED_FILES, linkAway, linkTarget, relink, type HostileTree } from "./helpers/hostile-tree.js";
import { releaseBelow } from "../src/host/release.js";
import { ImageRoot } from "../src/host/image-root.js";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render } from "../src/render/index.js";

/**
 * `pibake build --base` from a crafted image: the trixie stand-in with every
 * directory and file that a build touches from the host moved elsewhere in
 * the image and replaced by a link to it (absolute for the first build; the
 * regeneration after it, relative links that climb with ../../..). The paths
 * the links name exist on the host too, as canaries holding a random marker:
 * a build that followed a link on the host would change them or copy them
 * into the image.
 */
const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64") || process.arch === "arm64";
const FIXTURE = path.join(repoRoot, "scripts/fixtures/base-image.sh");
const env = { ...secretEnv, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" };

describe.skipIf(!isRoot || !hasBinfmt)("pibake build --base from an image whose links name the host's files", () => {
  const tmp = tempDir("pibake-hostile-");
  let tree: HostileTree;
  let before = "";
  let cfg = "";
  const state = () => path.join(tmp.dir, "state");

  /** The config with Wi-Fi, so that NetworkManager's files are written too. */
  function config(domain: string): string {
    const c = validConfig();
    c.tls.domain = domain;
    c.nodeRed = { enabled: false };
    c.network.wifi = { ssid: "HomeNet", passphrase: { env: "T_WIFI_PW" }, country: "DE" };
    return writeJson(path.join(tmp.dir, `${domain}.json`), c);
  }

  /** Change the links of an image's root file system (mounted read-write for it). */
  async function craft(image: string, change: (root: string) => void): Promise<void> {
    const mnt = path.join(tmp.dir, "craft");
    const m = await mountRoot(image, mnt, { readWrite: true });
    try {
      change(mnt);
    } finally {
      await m.release();
    }
  }

  /** The build's image, checked: the canaries are as they were, the marker is nowhere in it, and the rendered files are where the image's links lead. */
  async function expectBuiltInside(out: string, configPath: string, style: "absolute" | "relative"): Promise<string> {
    expect(tree.digest()).toBe(before);
    const image = path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!);
    expect(Object.fromEntries(await countInImage(image, [tree.marker]))).toEqual({ [tree.marker]: 0 });
    const { model } = loadConfig(configPath, env);
    const rendered = await render(model, await prepareSecrets(model, new StateDir(state())));
    const mnt = path.join(tmp.dir, `check-${style}`);
    const m = await mountRoot(image, mnt);
    try {
      const root = new ImageRoot(mnt);
      const overlayPaths = new Set(rendered.overlay.map((f) => f.path));
      for (const rel of [...LINKED_DIRS, ...LINKED_FILES]) {
        // A file of the overlay replaces a link to a file, as the image's tar does (it unlinks, then creates); every other link stays and leads where it led.
        if (overlayPaths.has(rel) && !lstatSync(path.join(mnt, rel)).isSymbolicLink()) continue;
        expect(lstatSync(path.join(mnt, rel)).isSymbolicLink(), rel).toBe(true);
        expect(readlinkSync(path.join(mnt, rel)), rel).toBe(linkTarget(tree.canary, rel, style));
      }
      for (const f of rendered.overlay) expect(root.read(f.path)?.equals(f.content), f.path).toBe(true);
      expect(root.readText("/etc/hostname")).toBe(`${model.image.hostname}\n`);
      expect(root.readText("/var/lib/pibake/build.json")).toContain(`"domain": "${model.tls.domain}"`);
      expect(existsSync(path.join(mnt, tree.canary, "etc/mosquitto/conf.d/pibake.conf"))).toBe(true);
    } finally {
      await m.release();
    }
    return image;
  }

  beforeAll(async () => {
    const fixture = (await execa("bash", [FIXTURE, "trixie"], { timeout: FIXTURE_TIMEOUT_MS })).stdout.trim();
    tree = hostCanaries();
    before = tree.digest();
    const base = path.join(tmp.dir, "crafted.img");
    await execa("cp", ["--sparse=always", fixture, base]);
    await craft(base, (root) => linkAway(root, tree.canary, "absolute"));
    cfg = config("home.freemyip.com");
  }, FIXTURE_TIMEOUT_MS + 120_000);

  afterAll(async () => {
    await releaseBelow(tmp.dir);
    tree?.remove();
    tmp.cleanup();
  });

  let firstImage = "";

  it("builds with absolute links: every file lands where the image's links lead, nothing on the host is read or written", async () => {
    const out = path.join(tmp.dir, "out1");
    const r = await pibake(
      ["build", cfg, "--base", path.join(tmp.dir, "crafted.img"), "--out", out, "--state", state(), "--compress", "none", "--log-format", "plain"],
      { env, timeout: 1_500_000 },
    );
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    firstImage = await expectBuiltInside(out, cfg, "absolute");
  }, 1_600_000);

  it("regenerates with relative links that climb out of the image: the same", async () => {
    expect(firstImage).not.toBe("");
    await craft(firstImage, (root) => relink(root, tree.canary, "relative"));
    const cfg2 = config("cabin.freemyip.com");
    const out = path.join(tmp.dir, "out2");
    const r = await pibake(["build", cfg2, "--base", firstImage, "--out", out, "--state", state(), "--compress", "none", "--log-format", "plain"], {
      env,
      timeout: 900_000,
    });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    // Only files change, but the fast path does not write through links: the root path does, and says why.
    expect(r.stdout).toMatch(
      /full build, not the fast path: directories on the way to files the fast path writes or removes are links in the image \(.*\/var\/lib\/pibake, on the way to \/var\/lib\/pibake\/build\.json/,
    );
    await expectBuiltInside(out, cfg2, "relative");
  }, 1_000_000);
});
