import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa, type ResultPromise } from "execa";
import { X509Certificate } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statfsSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { startImageServer, type ImageServer } from "./helpers/image-server.js";
import { FIXTURE_TIMEOUT_MS, pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { freePort, waitForPort } from "./helpers/net.js";
import { tryConnect } from "./helpers/mqtt.js";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render, type Rendered } from "../src/render/index.js";
import { parseMbr } from "../src/image/partitions.js";
import { listLoops } from "../src/host/loop.js";
import { mountsBelow } from "../src/host/mounts.js";
import { releaseBelow } from "../src/host/release.js";
import { bootFile, countInImage, expectOverlayInRoot, mountRoot, readAt } from "./helpers/image.js";
import { brokerImageConfig, BROKER_DOMAIN, offerImage, offerState } from "./helpers/broker-image.js";

/**
 * `pibake build CONFIG --base IMAGE` against a realistic Raspberry Pi OS
 * stand-in (scripts/fixtures/base-image.sh), end to end through the CLI:
 * one first build (packages installed under qemu-user: minutes) whose image
 * every other check reuses; a regeneration for a new domain from that image;
 * SIGINT at each long step and a SIGKILL of the whole process tree, with
 * nothing left behind (mounts, loop devices, partial files).
 */
const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64") || process.arch === "arm64";
const CACHE = process.env.PIBAKE_TEST_CACHE ?? "/var/cache/pibake-test";
const FIXTURE = path.join(repoRoot, "scripts/fixtures/base-image.sh");
const env = { ...secretEnv, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" };
const DOMAIN = BROKER_DOMAIN;
const NEW_DOMAIN = "cabin.freemyip.com";

/** The SSH key of the first build's config: made by the first build, so that boot.test.ts can log in to the image it takes over. */
let sshKeyFile = "";

/** The boot test's config (test/helpers/broker-image.ts), so that it can boot this file's first image instead of building its own. */
function config(domain = DOMAIN): Record<string, any> {
  return brokerImageConfig(readFileSync(`${sshKeyFile}.pub`, "utf8").trim(), domain);
}

/** The base as users download it: compressed (zstd here: quick to make once, and cached beside the fixture). */
async function compressedBase(base: string): Promise<string> {
  const zst = path.join(CACHE, `${path.basename(base)}.zst`);
  if (existsSync(zst)) return zst;
  const tmp = `${zst}.tmp-${process.pid}`;
  await execa("zstd", ["-T0", "-q", "-f", "-o", tmp, base], { timeout: 600_000 });
  renameSync(tmp, zst);
  return zst;
}

/** What the root file system of a tight base has free, as df shows it: under 100 MiB. */
const TIGHT_FREE = 80 * 2 ** 20;

/** Free bytes of the image's root file system, as df shows them (blocks reserved for root left out), with `fill` bytes of a file taken first. */
async function rootFreeBytes(image: string, opts: { readWrite?: boolean; fill?: (free: number) => number } = {}): Promise<number> {
  const dir = `${image}.root-${process.pid}`;
  const m = await mountRoot(image, dir, { readWrite: opts.readWrite });
  try {
    const avail = () => {
      const st = statfsSync(dir);
      return Number(st.bavail) * Number(st.bsize);
    };
    if (opts.fill) await execa("fallocate", ["-l", String(opts.fill(avail())), path.join(dir, "var/filler.bin")]);
    return avail();
  } finally {
    await m.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The stand-in with under 100 MiB free on its root file system, as a base a user filled would be: a
 * file (fallocate: its blocks taken, nothing written) leaves TIGHT_FREE. resize2fs cannot do it: the
 * stand-in is at its estimated minimum already. Cached beside the stand-in.
 */
async function tightBase(base: string): Promise<string> {
  const tight = path.join(CACHE, path.basename(base).replace(/\.img$/, `-free${TIGHT_FREE / 2 ** 20}M.img`));
  if (existsSync(tight)) return tight;
  const tmp = `${tight}.tmp-${process.pid}`;
  await execa("cp", ["--sparse=always", base, tmp]);
  await rootFreeBytes(tmp, { readWrite: true, fill: (free) => free - TIGHT_FREE });
  renameSync(tmp, tight);
  return tight;
}

/** Where the test's download host serves the base, as Raspberry Pi's does (a .zst here: the faithful base is cached as one). */
const OFFICIAL_PATH = "raspios_lite_arm64/images/raspios_lite_arm64-2026-04-13/2026-04-13-raspios-trixie-arm64-lite.img.zst";

/** Raspberry Pi Imager's OS list, nested as the real one: Lite under "Raspberry Pi OS (other)". */
function osListFor(server: ImageServer, lite: Record<string, unknown>) {
  return {
    os_list: [
      {
        name: "Raspberry Pi OS (64-bit)",
        description: "A port of Debian Trixie with the Raspberry Pi Desktop",
        icon: "",
        url: `${server.base}/images/raspios_arm64/images/raspios_arm64-2026-04-13/2026-04-13-raspios-trixie-arm64.img.xz`,
        extract_size: 1,
        extract_sha256: "0".repeat(64),
        image_download_size: 1,
        release_date: "2026-04-13",
      },
      {
        name: "Raspberry Pi OS (other)",
        description: "Other Raspberry Pi OS based images",
        icon: "",
        subitems: [
          {
            name: "Raspberry Pi OS Lite (64-bit)",
            description: "A port of Debian Trixie with no desktop environment",
            icon: "",
            release_date: "2026-04-13",
            devices: ["pi5-64bit", "pi4-64bit"],
            init_format: "cloudinit-rpi",
            ...lite,
          },
        ],
      },
      { name: "Other general-purpose OS", description: "", icon: "", subitems_url: `${server.base}/os_list_other.json` },
    ],
  };
}

/** Nothing of a build left under `dir`: no mount, no loop device on a file there. */
function leftovers(dir: string): string[] {
  return [
    ...mountsBelow(dir).map((m) => `mount ${m}`),
    ...listLoops()
      .filter((l) => l.backingFile.startsWith(`${dir}/`))
      .map((l) => `loop ${l.dev} on ${l.backingFile}`),
  ];
}

/** Run a build and send SIGINT (or SIGKILL to its process group) once its output matches `when`. */
async function interruptWhen(args: string[], when: RegExp, signal: "SIGINT" | "SIGKILL" = "SIGINT", delayMs = 0, extraEnv: Record<string, string> = {}) {
  const child = execa(process.execPath, [path.join(repoRoot, "bin/pibake.js"), ...args], {
    reject: false,
    all: true,
    env: { ...env, ...extraEnv, CI: "true" },
    cwd: repoRoot,
    stdin: "ignore",
    detached: signal === "SIGKILL",
    timeout: 1_200_000,
  });
  let text = "";
  let sent = false;
  const seen = new Promise<void>((resolve) => {
    child.all?.on("data", (d: Buffer) => {
      text += d.toString();
      if (!sent && when.test(text)) {
        sent = true;
        setTimeout(() => {
          if (signal === "SIGKILL") process.kill(-child.pid!, "SIGKILL");
          else child.kill("SIGINT");
          resolve();
        }, delayMs);
      }
    });
  });
  const result = await child;
  void seen;
  return { result, sent, text: result.all ?? text };
}

describe.skipIf(!isRoot)("pibake build --base: inputs that are not a Raspberry Pi OS image", () => {
  const tmp = tempDir("pibake-base-bad-");
  let cfg = "";
  beforeAll(async () => {
    cfg = writeJson(path.join(tmp.dir, "broker.json"), { ...validConfig(), nodeRed: { enabled: false } });
  });
  afterAll(() => tmp.cleanup());

  const build = (base: string, extra: string[] = []) =>
    pibake(["build", cfg, "--base", base, "--out", path.join(tmp.dir, "out"), "--compress", "none", ...extra], { env, timeout: 300_000 });
  const disk = async (name: string, table: string) => {
    const f = path.join(tmp.dir, name);
    await execa("truncate", ["-s", "64M", f]);
    await execa("sfdisk", ["--quiet", "--no-reread", "--no-tell-kernel", f], { input: table });
    return f;
  };

  it("names the problem and exits 1, leaving --out without an image", async () => {
    const notImage = path.join(tmp.dir, "notes.img");
    writeFileSync(notImage, "hello\n".repeat(200));
    let r = await build(notImage);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/notes\.img: no MBR partition table \(the first sector does not end in 55 aa\): pibake needs a Raspberry Pi OS disk image/);

    const ntfs = await disk("ntfs.img", "label: dos\n\nstart=8192, size=16384, type=c\nstart=24576, type=7\n");
    r = await build(ntfs);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("ntfs.img: partition 2 is not ext4 (found type 0x07, NTFS/exFAT): pibake needs a Raspberry Pi OS image");

    const gpt = await disk("gpt.img", "label: gpt\n\nsize=16M, type=L\n");
    r = await build(gpt);
    expect(r.stderr).toMatch(/gpt\.img: the disk uses a GPT partition table/);

    const truncated = path.join(tmp.dir, "cut.img.xz");
    await execa("xz", ["-T0", "-c", "-1", ntfs], { stdout: { file: `${truncated}.full` } });
    writeFileSync(truncated, readFileSync(`${truncated}.full`).subarray(0, 2000));
    r = await build(truncated);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/cannot decompress .*cut\.img\.xz/);

    // A --base that names nothing is a usage error.
    r = await build(path.join(tmp.dir, "missing.img.xz"));
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--base .*missing\.img\.xz: no such file/);

    // None of this left anything in --out.
    const out = path.join(tmp.dir, "out");
    expect(existsSync(out) ? readdirSync(out).filter((f) => !f.endsWith(".failed.log")) : []).toEqual([]);
    expect(leftovers(tmp.dir)).toEqual([]);
  }, 300_000);

  /** A small Raspberry Pi OS-shaped image (FAT p1, ext4 p2) whose root holds `files` besides an arm64 /bin/bash and os-release. */
  const tinyImage = async (name: string, files: Record<string, string>, ext4Feature?: string) => {
    const dir = path.join(tmp.dir, `${name}.root`);
    const aarch64 = Buffer.alloc(64);
    Buffer.from("7f454c460201010000000000000000000200b700", "hex").copy(aarch64);
    const all: Record<string, string | Buffer> = {
      "bin/bash": aarch64,
      "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_CODENAME=trixie\n',
      "etc/fstab": "PARTUUID=ab-01 /boot/firmware vfat defaults 0 2\n",
      "etc/machine-id": "uninitialized\n",
      ...files,
    };
    for (const [f, content] of Object.entries(all)) {
      mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
      writeFileSync(path.join(dir, f), content);
    }
    const ext = path.join(tmp.dir, `${name}.ext4`);
    await execa("truncate", ["-s", "40M", ext]);
    await execa("mkfs.ext4", ["-q", "-F", "-d", dir, ext]);
    if (ext4Feature) await execa("debugfs", ["-w", "-R", `feature ${ext4Feature}`, ext]);
    const fat = path.join(tmp.dir, `${name}.vfat`);
    await execa("mkfs.vfat", ["-C", fat, "16384"]);
    const img = await disk(name, "label: dos\n\nstart=2048, size=32768, type=c\nstart=34816, type=83\n");
    await execa("dd", [`if=${fat}`, `of=${img}`, "bs=512", "seek=2048", "conv=notrunc", "status=none"]);
    await execa("dd", [`if=${ext}`, `of=${img}`, "bs=512", "seek=34816", "conv=notrunc", "status=none"]);
    return img;
  };

  it("refuses an image that has been booted, naming each trace, with exit 2 and nothing left behind", async () => {
    const booted = await tinyImage("booted.img", {
      "etc/ssh/ssh_host_ed25519_key": "not a real key\n",
      "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
      "var/lib/cloud/instances/rpios-image/boot-finished": "done\n",
    });
    const r = await build(booted);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toContain(
      "booted.img has been booted before: it holds SSH host keys (/etc/ssh/ssh_host_ed25519_key), a machine id in /etc/machine-id, cloud-init's instance data (/var/lib/cloud/instances). " +
        "Every Pi made from it would share them, and its first-boot set-up has already run. Start from the image as downloaded",
    );
    // The same image as downloaded (never booted) gets past that check.
    const fresh = await tinyImage("fresh.img", {});
    const f = await build(fresh);
    expect(f.stderr).not.toContain("has been booted before");
    expect(f.stderr).toMatch(/cannot run the image's arm64 programs in its chroot/);
    expect(leftovers(tmp.dir)).toEqual([]);
  }, 300_000);

  it("names ext4 features this machine's e2fsprogs cannot handle, before any work", async () => {
    // A feature bit no e2fsprogs knows: the real e2fsck refuses it as it refuses orphan_file on e2fsprogs before 1.47.
    const newer = await tinyImage("newer-ext4.img", {}, "FEATURE_C31");
    const r = await build(newer);
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(
      /newer-ext4\.img: the root file system uses ext4 features that this machine's e2fsprogs \(\d+\.\d+(\.\d+)?\) cannot check or resize: FEATURE_C31\. Build on a machine with a newer e2fsprogs/,
    );
    expect(r.stderr).not.toMatch(/packages|overlay/);
    expect(leftovers(tmp.dir)).toEqual([]);
  }, 300_000);

  it("refuses bad usage with exit 2", async () => {
    const r = await pibake(["build", cfg, "--base", "x.img", "--runner", "docker"], { env });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain("--runner applies to the pi-gen build only (--engine pi-gen), not to builds from an image");
    const g = await pibake(["build", cfg, "--base", "x.img", "--grow", "lots"], { env });
    expect(g.exitCode).toBe(2);
    expect(g.stderr).toMatch(/--grow lots: not a size/);
  });
});

describe.skipIf(!isRoot || !hasBinfmt)("pibake build --base", () => {
  const tmp = tempDir("pibake-base-");
  const state = path.join(tmp.dir, "state");
  const out1 = path.join(tmp.dir, "out1");
  let base = "";
  let baseZst = "";
  let baseFree = 0;
  /** The stand-in itself, whose facts base-image.sh records beside it (the tight base is a copy of it). */
  let standIn = "";
  let cfg = "";
  let image = "";
  let firstMs = 0;
  let firstOutput = "";
  let rendered: Rendered;
  const mnt = path.join(tmp.dir, "mnt");
  let mounted: Awaited<ReturnType<typeof mountRoot>> | undefined;
  let broker: ResultPromise | undefined;
  let server: ImageServer | undefined;
  const imageCache = path.join(tmp.dir, "xdg-cache");

  beforeAll(async () => {
    // From a base with under 100 MiB free: the room comes from apt's figures.
    standIn = (await execa("bash", [FIXTURE, "trixie"], { timeout: FIXTURE_TIMEOUT_MS })).stdout.trim();
    base = await tightBase(standIn);
    baseFree = await rootFreeBytes(base);
    baseZst = await compressedBase(base);
    sshKeyFile = path.join(tmp.dir, "id_ed25519");
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "pibake-boot-test", "-f", sshKeyFile], { timeout: 30_000 });
    cfg = writeJson(path.join(tmp.dir, "broker.json"), config());

    // The first build is a newcomer's: no --base, the official image from the OS list, here served on 127.0.0.1.
    server = await startImageServer();
    server.files.set(OFFICIAL_PATH, readFileSync(baseZst));
    server.list = osListFor(server, {
      url: `${server.base}/images/${OFFICIAL_PATH}`,
      image_download_size: statSync(baseZst).size,
      image_download_sha256: (await execa("sha256sum", [baseZst])).stdout.split(" ")[0],
      extract_size: statSync(base).size,
      extract_sha256: (await execa("sha256sum", [base])).stdout.split(" ")[0],
    });
    const t0 = Date.now();
    const r = await pibake(
      ["build", cfg, "--os-list", `${server.base}/os_list.json`, "--out", out1, "--state", state, "--compress", "none", "--log-format", "plain"],
      {
        env: { ...env, XDG_CACHE_HOME: imageCache, PIBAKE_OFFLINE: "0" },
        timeout: 1_800_000,
      },
    );
    firstMs = Date.now() - t0;
    firstOutput = `${r.stdout}\n${r.stderr}`;
    expect(r.exitCode, firstOutput).toBe(0);
    image = path.join(out1, readdirSync(out1).find((f) => f.endsWith(".img"))!);
    offerState({ config: cfg, state, key: sshKeyFile });

    // What the build rendered, again (renders repeat byte for byte with the same state directory).
    const { model } = loadConfig(cfg, env);
    rendered = await render(model, await prepareSecrets(model, new StateDir(state)));
    mounted = await mountRoot(image, mnt);
  }, FIXTURE_TIMEOUT_MS + 1_800_000);

  afterAll(async () => {
    await server?.close();
    broker?.kill("SIGKILL");
    await broker?.catch(() => undefined);
    await mounted?.release();
    await releaseBelow(tmp.dir);
    // Read only, never changed by the tests above: the boot test boots it.
    if (image) offerImage(image);
    tmp.cleanup();
  });

  it("delivers the image, its sha256, bmap, manifest, log and ca.crt, showing each step", async () => {
    const files = readdirSync(out1).sort();
    const b = path.basename(image, ".img");
    expect(files).toEqual(["ca.crt", `${b}.img`, `${b}.img.bmap`, `${b}.img.sha256`, `${b}.log`, `${b}.manifest.json`]);
    expect(b).toMatch(new RegExp(`^mqtt-broker-${DOMAIN.replace(/\./g, "\\.")}-\\d{4}-\\d\\d-\\d\\d$`));
    expect((await execa("sha256sum", ["-c", `${b}.img.sha256`], { cwd: out1 })).stdout).toBe(`${b}.img: OK`);
    const steps = ["render", "download base", "prepare base", "packages", "overlay", "finalize", "deliver"].map((s, i) =>
      firstOutput.indexOf(`[${i + 1}/7] ${s}`),
    );
    expect(
      steps.every((p) => p >= 0),
      firstOutput,
    ).toBe(true);
    expect([...steps].sort((x, y) => x - y)).toEqual(steps);
    // Progress while decompressing the .zst base.
    expect(firstOutput).toMatch(/decompressing .*\.img\.zst: .* of \d+(\.\d+)? GiB \(\d+%/);

    const m = JSON.parse(readFileSync(path.join(out1, `${b}.manifest.json`), "utf8"));
    expect(m.engine).toMatchObject({ engine: "base", baseCompression: "zstd", baseBuiltByPibake: false, regeneration: false, freeBlocksZeroed: "fstrim" });
    expect(m.engine.packagesInstalled).toEqual(expect.arrayContaining(["mosquitto", "ddclient"]));
    // What the build added, dependencies included, as dpkg counts it; the summary says it too.
    expect(m.engine.packagesAdded.names).toEqual(expect.arrayContaining(["mosquitto", "ddclient", "libmosquitto1", "nodejs"]));
    // Node-RED's npm is npm's own release, installed on first boot: not Debian's npm, which brings some 380 node-* packages
    // (trixie's nodejs itself depends on a handful: node-acorn, node-undici and the like).
    expect(m.engine.packagesAdded.names).not.toContain("npm");
    expect(m.engine.packagesAdded.names.filter((n: string) => n.startsWith("node-")).length).toBeLessThan(12);
    expect(m.engine.packagesAdded.count).toBe(m.engine.packagesAdded.names.length);
    expect(m.engine.packagesAdded.installedBytes).toBeGreaterThan(1 << 20);
    expect(firstOutput).toMatch(new RegExp(`packages +${m.engine.packagesAdded.count} added to the base \\(`));
    // The root partition grew by what apt in the image (trixie's apt 3) said the packages need, not by a constant: dpkg's count after the install agrees.
    expect(m.engine.aptEstimate.installBytes).toBeGreaterThan(10_000_000);
    expect(m.engine.packagesAdded.installedBytes / m.engine.aptEstimate.installBytes).toBeGreaterThan(0.9);
    expect(m.engine.packagesAdded.installedBytes / m.engine.aptEstimate.installBytes).toBeLessThan(1.15);
    // From under 100 MiB free (as df and pibake count it), the growth is what apt's figures and the stated margin need beyond it (in 64 MiB steps).
    expect(baseFree).toBeLessThan(100 * 2 ** 20);
    const MiB = 2 ** 20;
    expect(m.engine.aptEstimate.roomNeeded).toBe(m.engine.aptEstimate.downloadBytes + Math.ceil(m.engine.aptEstimate.installBytes * 1.3) + 768 * MiB);
    expect(m.engine.rootGrownBy).toBeGreaterThanOrEqual(m.engine.aptEstimate.roomNeeded - baseFree - 64 * MiB);
    expect(m.engine.rootGrownBy).toBeLessThan(m.engine.aptEstimate.roomNeeded - baseFree + 128 * MiB);
    console.log(
      `base-image: from ${(baseFree / MiB).toFixed(0)} MiB free, grown by ${(m.engine.rootGrownBy / MiB).toFixed(0)} MiB for apt's ${(m.engine.aptEstimate.downloadBytes / MiB).toFixed(0)} MiB of downloads and ${(m.engine.aptEstimate.installBytes / MiB).toFixed(0)} MiB installed (${m.engine.packagesAdded.count} packages added, ${(m.engine.packagesAdded.installedBytes / MiB).toFixed(0)} MiB)`,
    );
    expect(m.engine.baseSha256).toBe((await execa("sha256sum", [baseZst])).stdout.split(" ")[0]);
    // Which official image, from which list: verified on download, the download's digest recorded.
    expect(m.engine.official).toEqual({
      name: "Raspberry Pi OS Lite (64-bit)",
      file: path.basename(OFFICIAL_PATH),
      releaseDate: "2026-04-13",
      url: `${server!.base}/images/${OFFICIAL_PATH}`,
      sha256: m.engine.baseSha256,
      extractSha256: (await execa("sha256sum", [base])).stdout.split(" ")[0],
      list: `${server!.base}/os_list.json`,
    });
    expect(firstOutput).toMatch(/2026-04-13-raspios-trixie-arm64-lite\.img\.zst \(2026-04-13\), sha256 [0-9a-f]{16}…, downloaded and verified/);
    // Free blocks are holes: the image maps what the base held plus what the build added (packages, overlay), not its raw size.
    expect(m.image.mappedBytes).toBeLessThan(statSync(base).blocks * 512 + 400 * 2 ** 20);
    expect(m.image.mappedBytes).toBeLessThan(m.image.rawSize * 0.7);
    expect(m.domain).toBe(DOMAIN);
    expect(readFileSync(path.join(out1, "ca.crt"), "utf8")).toBe(readFileSync(path.join(state, "ca.crt"), "utf8"));
  });

  it("builds again from the cached official image with the download host gone, asking it for nothing", async () => {
    const seen = server!.requests.length;
    await server!.close();
    const outC = path.join(tmp.dir, "out-cached");
    const { result, sent, text } = await interruptWhen(
      ["build", cfg, "--os-list", `${server!.base}/os_list.json`, "--out", outC, "--state", state, "--compress", "none", "--log-format", "plain"],
      /\[3\/7\] prepare base\n/,
      "SIGINT",
      0,
      { XDG_CACHE_HOME: imageCache, PIBAKE_OFFLINE: "0" },
    );
    expect(sent, text).toBe(true);
    expect(text).toMatch(/cannot read the OS list .*ECONNREFUSED/);
    expect(text).toMatch(/2026-04-13-raspios-trixie-arm64-lite\.img\.zst \(2026-04-13\), sha256 [0-9a-f]{16}…, from the cache/);
    expect(server!.requests.length).toBe(seen);
    expect(result.exitCode, text).toBe(130);
    expect(leftovers(outC)).toEqual([]);
  }, 600_000);

  it("has every rendered file in the image with its content, owner and mode", () => {
    expectOverlayInRoot(mnt, rendered);
  });

  it("enables the broker's services and SSH, and no first-boot wizard", () => {
    const wants = path.join(mnt, "etc/systemd/system/multi-user.target.wants");
    for (const unit of ["mosquitto.service", "ddclient.service", "ssh.service", "NetworkManager.service", "pibake-status.service"]) {
      expect(lstatSync(path.join(wants, unit)).isSymbolicLink(), unit).toBe(true);
    }
    expect(lstatSync(path.join(mnt, "etc/systemd/system/timers.target.wants/pibake-status.timer")).isSymbolicLink()).toBe(true);
    expect(existsSync(path.join(wants, "userconfig.service"))).toBe(false);
    expect(readlinkSync(path.join(mnt, "etc/systemd/system/userconfig.service"))).toBe("/dev/null");
    expect(existsSync(path.join(mnt, "etc/ssh/sshd_config.d/rename_user.conf"))).toBe(false);
    expect(existsSync(path.join(mnt, "etc/systemd/system/getty.target.wants/getty@tty1.service"))).toBe(true);
    expect(existsSync(path.join(mnt, "usr/sbin/policy-rc.d"))).toBe(false);
  });

  it("does what pi-gen's config would: hostname, first user, password, SSH keys, locale, time zone, keyboard, Wi-Fi country", async () => {
    const c = config();
    expect(readFileSync(path.join(mnt, "etc/hostname"), "utf8")).toBe("broker\n");
    expect(readFileSync(path.join(mnt, "etc/hosts"), "utf8")).toMatch(/^127\.0\.1\.1\tbroker$/m);
    const passwd = readFileSync(path.join(mnt, "etc/passwd"), "utf8");
    expect(passwd).toMatch(/^admin:x:1000:1000:[^:]*:\/home\/admin:\/bin\/bash$/m);
    expect(passwd).not.toMatch(/^pi:/m);
    expect(readFileSync(path.join(mnt, "etc/group"), "utf8")).toMatch(/^sudo:x:\d+:.*\badmin\b/m);
    const hash = readFileSync(path.join(mnt, "etc/shadow"), "utf8")
      .split("\n")
      .find((l) => l.startsWith("admin:"))!
      .split(":")[1]!;
    expect(hash).toMatch(/^\$6\$/);
    const check = await execa("python3", [
      "-W",
      "ignore",
      "-c",
      "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])",
      env.T_USER_PW,
      hash,
    ]);
    expect(check.stdout).toBe("True");

    const keys = path.join(mnt, "home/admin/.ssh/authorized_keys");
    expect(readFileSync(keys, "utf8")).toBe(`${c.user.sshKeys.join("\n")}\n`);
    expect({ mode: statSync(keys).mode & 0o777, uid: statSync(keys).uid, dir: statSync(path.dirname(keys)).mode & 0o777 }).toEqual({
      mode: 0o600,
      uid: 1000,
      dir: 0o700,
    });
    expect(readFileSync(path.join(mnt, "etc/ssh/sshd_config.d/50-pibake.conf"), "utf8")).toMatch(/^PasswordAuthentication no$/m);

    expect(readlinkSync(path.join(mnt, "etc/localtime"))).toBe("/usr/share/zoneinfo/Europe/Berlin");
    expect(readFileSync(path.join(mnt, "etc/timezone"), "utf8")).toBe("Europe/Berlin\n");
    expect(readFileSync(path.join(mnt, "etc/default/keyboard"), "utf8")).toMatch(/^XKBLAYOUT="de"$/m);
    expect(readFileSync(path.join(mnt, "etc/default/locale"), "utf8")).toMatch(/^LANG=en_GB\.UTF-8$/m);
    expect(readFileSync(path.join(mnt, "etc/locale.gen"), "utf8")).toMatch(/^en_GB\.UTF-8 UTF-8$/m);

    // The boot partition, read with mtools: the Wi-Fi country for the kernel, no first-boot user rename.
    expect(bootFile(image, "cmdline.txt")).toMatch(/ cfg80211\.ieee80211_regdom=DE\n?$/);
    expect(bootFile(image, "userconf.txt")).toBeUndefined();
    // cloud-init's user-data is pibake's valid one, not the base's comments-only example (test/cloud-init-seed.test.ts).
    expect(bootFile(image, "user-data")).toBe(
      readFileSync(path.join(repoRoot, "stages/stage-pibake/02-first-boot/files/user-data"), "utf8").replace(/\n$/, ""),
    );
    for (const f of readdirSync(path.join(mnt, "var/lib/systemd/rfkill")))
      expect(readFileSync(path.join(mnt, "var/lib/systemd/rfkill", f), "utf8").trim()).toBe("0");
    expect(readFileSync(path.join(mnt, "var/lib/NetworkManager/NetworkManager.state"), "utf8")).toBe("[main]\nWirelessEnabled=true\n");
    // The first user logs in with a shell (the base made it with /usr/sbin/nologin).
    expect(passwd).toMatch(/^admin:[^\n]*:\/bin\/bash$/m);
    // cloud-init reads pibake's drop-in last, so that its settings win over Raspberry Pi's.
    const dropIns = readdirSync(path.join(mnt, "etc/cloud/cloud.cfg.d"))
      .filter((f) => f.endsWith(".cfg"))
      .sort();
    expect(dropIns.at(-1)).toBe("99_zz-pibake.cfg");
    expect(dropIns).toContain("99_raspberry-pi.cfg");
    // The image's own cloud-init merges its configuration so: no default user, the hostname kept, no network
    // config (with a name that sorted before Raspberry Pi's, users would stay [default] and "pi" come back).
    const merged = await execa(
      "chroot",
      [
        mnt,
        "python3",
        "-c",
        "import json; from cloudinit import util; c = util.read_conf_with_confd('/etc/cloud/cloud.cfg'); print(json.dumps([c.get('users'), c.get('preserve_hostname'), c.get('network')]))",
      ],
      { timeout: 120_000 },
    );
    expect(JSON.parse(merged.stdout)).toEqual([[], true, { config: "disabled" }]);

    // Per-machine state is left for the first boot, as pi-gen's export does; apt's downloads are gone.
    expect(readdirSync(path.join(mnt, "etc/ssh")).filter((f) => f.startsWith("ssh_host_"))).toEqual([]);
    // machine-id exactly as the base has it ("uninitialized" on trixie): systemd's first-boot logic must still run.
    expect(readFileSync(path.join(mnt, "etc/machine-id"), "utf8")).toBe(`${JSON.parse(readFileSync(standIn.replace(/\.img$/, ".json"), "utf8")).machineId}\n`);
    expect(readFileSync(path.join(mnt, "etc/machine-id"), "utf8")).toBe("uninitialized\n");
    // No backups of the account files, which would keep the base's (or an earlier build's) password hashes.
    expect(["passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-"].filter((f) => existsSync(path.join(mnt, "etc", f)))).toEqual([]);
    expect(readdirSync(path.join(mnt, "var/cache/apt/archives")).filter((f) => f.endsWith(".deb"))).toEqual([]);
    const marker = JSON.parse(readFileSync(path.join(mnt, "var/lib/pibake/build.json"), "utf8"));
    expect(marker).toMatchObject({ engine: "base", domain: DOMAIN, packages: expect.arrayContaining(["mosquitto", "ddclient"]) });
  });

  it("holds no plaintext secret of the config anywhere in the image (the ddclient token only in /etc/ddclient.conf)", async () => {
    const clear = [env.T_USER_PW, env.T_MQTT_SENSORS_PW, env.T_MQTT_PHONE_PW, env.T_WIFI_PW];
    const counts = await countInImage(image, [...clear, env.T_DDNS_TOKEN]);
    for (const s of clear) expect(counts.get(s), "a secret is in the image").toBe(0);
    // ddclient needs its token in clear text: once, in its 0600 config, nowhere else.
    expect(counts.get(env.T_DDNS_TOKEN)).toBe(1);
    expect(readFileSync(path.join(mnt, "etc/ddclient.conf"), "utf8")).toContain(env.T_DDNS_TOKEN);
    // Nor in anything delivered beside the image (the log goes through the same redaction).
    for (const f of readdirSync(out1).filter((f) => !f.endsWith(".img"))) {
      const content = readFileSync(path.join(out1, f));
      for (const s of [...clear, env.T_DDNS_TOKEN]) expect(content.includes(Buffer.from(s)), `${f} holds a secret`).toBe(false);
    }
  }, 300_000);

  it("runs the image's arm64 mosquitto through qemu-user, serving TLS to a strict client that trusts only ca.crt", async () => {
    // A copy, so that the delivered image stays as built; sparse, so it costs nothing.
    const copy = path.join(tmp.dir, "run.img");
    await execa("cp", ["--sparse=always", image, copy]);
    const root = path.join(tmp.dir, "run-root");
    const m = await mountRoot(copy, root, { readWrite: true });
    try {
      const tls = await freePort();
      const lan = await freePort();
      const stock = readFileSync(path.join(root, "etc/mosquitto/mosquitto.conf"), "utf8")
        .replace(/^include_dir .*$/m, "")
        .replace(/^log_dest .*$/m, "log_dest stderr")
        .replace(/^pid_file .*$/m, "");
      const fragment = readFileSync(path.join(root, "etc/mosquitto/conf.d/pibake.conf"), "utf8")
        .replace(/^listener 8883$/m, `listener ${tls} 127.0.0.1`)
        .replace(/^listener 1883$/m, `listener ${lan} 127.0.0.1`)
        .replace(/^listener 8884$/m, `listener ${await freePort()} 127.0.0.1`);
      expect(fragment, "every listener on a free port of 127.0.0.1").not.toMatch(/^listener \d+$/m);
      writeFileSync(path.join(root, "etc/mosquitto/pibake-test.conf"), `${stock}\n${fragment}\n`);
      let log = "";
      broker = execa("chroot", [root, "/usr/sbin/mosquitto", "-c", "/etc/mosquitto/pibake-test.conf"], { reject: false, all: true });
      broker.all?.on("data", (d: Buffer) => (log += d.toString()));
      let alive = true;
      void broker.then(() => (alive = false));
      await waitForPort(tls, 60_000, () => alive);

      const ca = readFileSync(path.join(out1, "ca.crt"));
      const good = await tryConnect(`mqtts://127.0.0.1:${tls}`, {
        ca,
        servername: DOMAIN,
        rejectUnauthorized: true,
        username: "phone",
        password: env.T_MQTT_PHONE_PW,
      });
      expect(good.ok, `${good.error}\n${log}`).toBe(true);
      good.client!.end(true);
      const bad = await tryConnect(`mqtts://127.0.0.1:${tls}`, {
        ca,
        servername: DOMAIN,
        rejectUnauthorized: true,
        username: "phone",
        password: "wrong-password",
      });
      expect(bad.ok).toBe(false);
      expect(bad.error).toMatch(/Not authorized|Bad username or password/i);
      // A client that trusts only the system's CAs refuses the broker.
      const untrusted = await tryConnect(`mqtts://127.0.0.1:${tls}`, {
        servername: DOMAIN,
        rejectUnauthorized: true,
        username: "phone",
        password: env.T_MQTT_PHONE_PW,
      });
      expect(untrusted.ok).toBe(false);
    } finally {
      broker?.kill("SIGTERM");
      await broker?.catch(() => undefined);
      broker = undefined;
      await m.release();
      rmSync(copy, { force: true });
    }
  }, 180_000);

  it("regenerates for a new domain from its own image in a small fraction of the first build: new certificate, same CA", async () => {
    const out2 = path.join(tmp.dir, "out2");
    const cfg2 = writeJson(path.join(tmp.dir, "broker2.json"), config(NEW_DOMAIN));
    const t0 = Date.now();
    const r = await pibake(["build", cfg2, "--base", image, "--out", out2, "--state", state, "--compress", "none", "--log-format", "plain"], {
      env,
      timeout: 600_000,
    });
    const regenMs = Date.now() - t0;
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/\[3\/6\] packages: skipped, already installed/);
    console.log(
      `base-image: first build ${(firstMs / 1000).toFixed(1)} s, regeneration ${(regenMs / 1000).toFixed(1)} s (${((regenMs * 100) / firstMs).toFixed(1)}%)`,
    );
    expect(regenMs).toBeLessThan(firstMs / 4);

    const img2 = path.join(out2, readdirSync(out2).find((f) => f.endsWith(".img"))!);
    expect(path.basename(img2)).toContain(NEW_DOMAIN);
    const m1 = JSON.parse(readFileSync(image.replace(/\.img$/, ".manifest.json"), "utf8"));
    const m2 = JSON.parse(readFileSync(img2.replace(/\.img$/, ".manifest.json"), "utf8"));
    expect(m2.engine).toMatchObject({ regeneration: true, packagesInstalled: [], baseBuiltByPibake: "0.1.0" });
    expect(m2.certificate.subject).toBe(`CN=${NEW_DOMAIN}`);
    expect(m2.certificate.dnsNames).toContain(NEW_DOMAIN);
    expect(m2.ca.sha256Fingerprint).toBe(m1.ca.sha256Fingerprint);
    expect(m2.certificate.sha256Fingerprint).not.toBe(m1.certificate.sha256Fingerprint);

    const root2 = path.join(tmp.dir, "mnt2");
    const m = await mountRoot(img2, root2);
    try {
      const cert = new X509Certificate(readFileSync(path.join(root2, "etc/mosquitto/certs/server.crt")));
      const ca = new X509Certificate(readFileSync(path.join(out2, "ca.crt")));
      expect(cert.subject).toBe(`CN=${NEW_DOMAIN}`);
      expect(cert.checkHost(NEW_DOMAIN)).toBe(NEW_DOMAIN);
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(readFileSync(path.join(out2, "ca.crt"), "utf8")).toBe(readFileSync(path.join(out1, "ca.crt"), "utf8"));
      expect(readFileSync(path.join(root2, "etc/ddclient.conf"), "utf8")).toContain(NEW_DOMAIN);
    } finally {
      await m.release();
    }
    // The old configuration's blocks were freed and zeroed: the token is still in the image exactly once.
    expect((await countInImage(img2, [env.T_DDNS_TOKEN])).get(env.T_DDNS_TOKEN)).toBe(1);
  }, 600_000);

  it("grows the root partition on request and shrinks the result to its used size plus a margin", async () => {
    const outG = path.join(tmp.dir, "outG");
    // 1 GiB: the first build grew the root only by what apt said its packages need, and resize2fs's
    // estimate of the minimum is generous, so a small growth would leave --shrink nothing to take back.
    const r = await pibake(["build", cfg, "--base", image, "--out", outG, "--state", state, "--compress", "none", "--grow", "1G", "--shrink"], {
      env,
      timeout: 600_000,
    });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    const img = path.join(outG, readdirSync(outG).find((f) => f.endsWith(".img"))!);
    const m = JSON.parse(readFileSync(img.replace(/\.img$/, ".manifest.json"), "utf8"));
    expect(m.engine.rootGrownBy).toBe(1024 * 1024 * 1024);
    expect(m.engine.rootShrunkTo).toBeGreaterThan(0);
    // The table, as sfdisk reads it: the root partition ends where the file ends, at the shrunk size.
    const sf = JSON.parse((await execa("sfdisk", ["--json", img])).stdout).partitiontable;
    const p2 = sf.partitions[1];
    expect((p2.start + p2.size) * 512).toBe(statSync(img).size);
    expect(p2.size * 512).toBe(m.engine.rootShrunkTo);
    // Shrinking took back part of the growth.
    expect(statSync(img).size).toBeLessThan(statSync(image).size + 1024 * 1024 * 1024);
    // The file system fills its partition exactly, is clean, and still has the broker.
    const dev = (
      await execa("losetup", ["--find", "--show", "--read-only", "--offset", String(p2.start * 512), "--sizelimit", String(p2.size * 512), img])
    ).stdout.trim();
    try {
      const info = (await execa("dumpe2fs", ["-h", dev])).stdout;
      expect(Number(/Block count:\s+(\d+)/.exec(info)![1]) * Number(/Block size:\s+(\d+)/.exec(info)![1])).toBe(p2.size * 512);
      expect((await execa("e2fsck", ["-f", "-n", dev], { reject: false })).exitCode).toBe(0);
    } finally {
      await execa("losetup", ["--detach", dev], { reject: false });
    }
    const root = path.join(tmp.dir, "mntG");
    const mm = await mountRoot(img, root);
    try {
      expect(existsSync(path.join(root, "etc/mosquitto/conf.d/pibake.conf"))).toBe(true);
    } finally {
      await mm.release();
    }
  }, 600_000);

  it("stops cleanly on SIGINT during decompress, package install, overlay and compress, and the next run works", async () => {
    const outI = path.join(tmp.dir, "outI");
    const stateI = path.join(tmp.dir, "stateI");
    const cases: { step: string; args: string[]; when: RegExp; delayMs?: number }[] = [
      { step: "prepare base", args: ["--base", baseZst, "--compress", "none"], when: /decompressing .*: .* of / },
      { step: "packages", args: ["--base", base, "--compress", "none"], when: /\[3\/6\] packages\n/, delayMs: 3000 },
      { step: "overlay", args: ["--base", image, "--compress", "none"], when: /\[4\/6\] overlay\n/ },
      { step: "deliver", args: ["--base", image, "--compress", "xz"], when: /compress: xz/ },
    ];
    for (const c of cases) {
      const { result, sent, text } = await interruptWhen(
        ["build", cfg, "--out", outI, "--state", stateI, "--log-format", "plain", ...c.args],
        c.when,
        "SIGINT",
        c.delayMs ?? 0,
      );
      expect(sent, `never reached ${c.step}:\n${text}`).toBe(true);
      expect(result.exitCode, text).toBe(130);
      expect(text).toContain(`interrupted by SIGINT during step "${c.step}": stopped and cleaned up; no image was written`);
      expect(leftovers(outI), c.step).toEqual([]);
      expect(existsSync(outI) ? readdirSync(outI) : [], c.step).toEqual([]);
    }
    const again = await pibake(["build", cfg, "--base", image, "--out", outI, "--state", stateI, "--compress", "none"], { env, timeout: 600_000 });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(readdirSync(outI).filter((f) => f.endsWith(".img"))).toHaveLength(1);
  }, 1_200_000);

  it("after a SIGKILL of the whole process tree, the next build releases what it left and succeeds", async () => {
    // --full: the root path, with its mounts and loop devices (a regeneration would take the fast path, which has none).
    const outK = path.join(tmp.dir, "outK");
    const { result, sent, text } = await interruptWhen(
      ["build", cfg, "--base", image, "--full", "--out", outK, "--state", path.join(tmp.dir, "stateK"), "--compress", "none", "--log-format", "plain"],
      /\[4\/6\] overlay\n/,
      "SIGKILL",
    );
    expect(sent, text).toBe(true);
    expect(result.signal ?? result.exitCode).toBe("SIGKILL");
    const work = readdirSync(outK).filter((f) => f.startsWith(".pibake-work-"));
    expect(work).toHaveLength(1);
    expect(leftovers(outK).length, "a SIGKILL leaves its mounts and loop devices").toBeGreaterThan(0);
    expect(readdirSync(outK).filter((f) => f.endsWith(".img"))).toEqual([]);

    const again = await pibake(["build", cfg, "--base", image, "--full", "--out", outK, "--state", path.join(tmp.dir, "stateK"), "--compress", "none"], {
      env,
      timeout: 600_000,
    });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/cleaned up after an interrupted build: .*unmounted .*detached \/dev\/loop\d+.*removed .*\.pibake-work-/);
    expect(leftovers(outK)).toEqual([]);
    expect(readdirSync(outK).filter((f) => f.startsWith("."))).toEqual([]);
  }, 600_000);
});
