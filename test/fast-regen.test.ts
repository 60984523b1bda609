import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { binReadableBy, repoRoot, secretEnv, tempDir } from "./helpers/cli.js";
import { countInImage, mountRoot, readAt } from "./helpers/image.js";
import { fileTree, treeDifferences } from "./helpers/file-tree.js";
import { env, pibakeImage, regenerate, type PibakeImage, type Regenerated } from "./helpers/pibake-image.js";
import { parseMbr } from "../src/image/partitions.js";

/**
 * The fast path of `pibake build --base IMAGE` on an image pibake built (the
 * cached one of test/helpers/pibake-image.ts, 3 GB raw): run as nobody with
 * PATH holding only node, so that any mount, losetup, mtools or e2fsprogs
 * call fails; then the same config regenerated the full way as root, and the
 * two images' root and boot file trees compared path by path.
 */
const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64") || process.arch === "arm64";
const NEW_DOMAIN = "cabin.freemyip.com";
const SETPRIV = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
/** New secrets for the regeneration: the base's must not survive in its image. */
const NEW_SECRETS = { T_USER_PW: "New-User-Secret-4d2a", T_MQTT_SENSORS_PW: "New-Sensors-Secret-8e1f", T_DDNS_TOKEN: "NewDdnsToken9a8b7c6d" };

function rootPartition(image: string) {
  return parseMbr(readAt(image, 0, 512)).partitions[1]!;
}

/** The boot partition's files, copied out with mtools. */
async function bootTree(image: string, dir: string) {
  const boot = parseMbr(readAt(image, 0, 512)).partitions[0]!;
  mkdirSync(dir, { recursive: true });
  await execa("mcopy", ["-s", "-n", "-i", `${image}@@${boot.offset}`, "::/", `${dir}/`], { env: { MTOOLS_SKIP_CHECK: "1" } });
  return fileTree(dir, { owners: false });
}

async function rootTree(image: string, dir: string) {
  const m = await mountRoot(image, dir);
  try {
    return fileTree(dir);
  } finally {
    await m.release();
  }
}

/** build.json with the time of the build taken out: the one field two builds of the same config differ in. */
async function markerWithoutTime(image: string): Promise<unknown> {
  const r = await execa("debugfs", ["-R", "cat /var/lib/pibake/build.json", `${image}?offset=${rootPartition(image).offset}`]);
  const m = JSON.parse(r.stdout) as Record<string, unknown>;
  delete m.builtAt;
  return m;
}

describe.skipIf(!isRoot || !hasBinfmt)("pibake build --base: fast regeneration of an image pibake built", () => {
  const tmp = tempDir("pibake-fast-");
  let img: PibakeImage;
  let fast: Regenerated;
  let oldSecrets: string[] = [];
  /** pibake.js where nobody can read it. */
  let bin = "";

  beforeAll(async () => {
    img = await pibakeImage();
    const key = readFileSync(path.join(img.state, "server.key"), "utf8");
    // The key's PEM body (one base64 line of it is enough to find it), the old token and the old password hashes.
    oldSecrets = [key.split("\n")[5]!, secretEnv.T_DDNS_TOKEN];
    bin = await binReadableBy(SETPRIV, tmp.dir);
    fast = await regenerate(img, { dir: path.join(tmp.dir, "fast"), domain: NEW_DOMAIN, env: NEW_SECRETS, asUser: SETPRIV, bin, newServerKey: true });
  }, 3_600_000);
  afterAll(() => tmp.cleanup());

  it("runs as a user without root, with PATH holding only node, and says it took the fast path", () => {
    expect(fast.exitCode, fast.output).toBe(0);
    expect(fast.output).toMatch(/\[3\/6\] packages: skipped/);
    expect(fast.output).toMatch(/fast path: .* only files change/);
    const manifest = JSON.parse(readFileSync(fast.image!.replace(/\.img$/, ".manifest.json"), "utf8"));
    expect(manifest.engine.fastPath).toMatchObject({ copy: expect.stringMatching(/^(reflink|sparse)$/) });
    expect(readdirSync(fast.out).sort()).toEqual(expect.arrayContaining(["ca.crt", path.basename(fast.image!), `${path.basename(fast.image!)}.sha256`]));
  });

  it("leaves a root file system that e2fsck -fn finds clean", async () => {
    const r = await execa("e2fsck", ["-fn", `${fast.image}?offset=${rootPartition(fast.image!).offset}`], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
  });

  it("leaves no byte of the old server key or the old ddclient token in the raw image", async () => {
    const newKey = readFileSync(path.join(fast.state, "server.key"), "utf8").split("\n")[5]!;
    const counts = await countInImage(fast.image!, [...oldSecrets, newKey, NEW_SECRETS.T_DDNS_TOKEN]);
    expect(Object.fromEntries(oldSecrets.map((s) => [s, counts.get(s)]))).toEqual(Object.fromEntries(oldSecrets.map((s) => [s, 0])));
    // The search would have found them: the new ones are there.
    expect(counts.get(newKey)).toBeGreaterThan(0);
    expect(counts.get(NEW_SECRETS.T_DDNS_TOKEN)).toBeGreaterThan(0);
  });

  it("gives the same root and boot file trees as the full path for the same config", async () => {
    // The same certificate and hashes on both: the full path starts from the state the fast one left.
    const full = await regenerate(img, {
      dir: path.join(tmp.dir, "full"),
      domain: NEW_DOMAIN,
      env: NEW_SECRETS,
      extraArgs: ["--full"],
      config: fast.config,
      fromState: fast.state,
    });
    expect(full.exitCode, full.output).toBe(0);
    expect(full.output).toMatch(/full build, not the fast path: --full asks for it/);
    const diffs = [
      ...treeDifferences(await rootTree(fast.image!, path.join(tmp.dir, "m-fast")), await rootTree(full.image!, path.join(tmp.dir, "m-full"))),
      ...treeDifferences(await bootTree(fast.image!, path.join(tmp.dir, "b-fast")), await bootTree(full.image!, path.join(tmp.dir, "b-full"))).map(
        (d) => `boot: ${d}`,
      ),
    ].filter((d) => !d.startsWith("var/lib/pibake/build.json: content"));
    expect(diffs).toEqual([]);
    expect(await markerWithoutTime(fast.image!)).toEqual(await markerWithoutTime(full.image!));
  }, 1_800_000);

  it("stopped by Ctrl-C while it writes the image, leaves nothing of it in --out", async () => {
    const dir = path.join(tmp.dir, "interrupted");
    mkdirSync(dir, { recursive: true });
    const cfg = path.join(dir, "broker.json");
    writeFileSync(cfg, JSON.stringify(fast.config));
    const out = path.join(dir, "out");
    const child = execa(
      process.execPath,
      [
        path.join(repoRoot, "bin/pibake.js"),
        "build",
        cfg,
        "--base",
        img.image,
        "--out",
        out,
        "--state",
        fast.state,
        "--compress",
        "none",
        "--log-format",
        "plain",
      ],
      {
        reject: false,
        all: true,
        env: { ...env, ...NEW_SECRETS, CI: "true" },
        stdin: "ignore",
        timeout: 600_000,
      },
    );
    let sent = false;
    child.all?.on("data", (d: Buffer) => {
      if (!sent && /writing the image/.test(d.toString())) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    const r = await child;
    expect(sent, r.all).toBe(true);
    expect(r.exitCode, r.all).toBe(130);
    expect(readdirSync(out).filter((f) => !f.endsWith(".failed.log"))).toEqual([]);
  });

  it("refuses as a user, exit 2, naming sudo -E and the change, when the render needs more than files", async () => {
    // The image has Node-RED already (examples/broker.json): a new keyboard is what makes debconf run in it.
    const config = { ...img.config, image: { ...img.config.image, keyboard: { keymap: "fr", layout: "French" } } };
    const r = await regenerate(img, { dir: path.join(tmp.dir, "refused"), domain: NEW_DOMAIN, env: NEW_SECRETS, asUser: SETPRIV, bin, config });
    expect(r.exitCode, r.output).toBe(2);
    expect(r.output).toMatch(/sudo -E/);
    expect(r.output).toMatch(/the keyboard changes to fr: debconf records it in the image/);
    expect(r.image).toBeUndefined();
  });
});
