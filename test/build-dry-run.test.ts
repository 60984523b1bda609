/**
 * pibake build --dry-run through the real CLI: the plan (engine, base image,
 * steps, file names, every requirement with its state), its exit codes, and
 * that it creates nothing: no state directory, no --out, no image cache, no
 * saved OS list. The OS list is served on 127.0.0.1 (PIBAKE_OFFLINE, which
 * vitest's config sets, is cleared for it); nothing reaches the Internet. As root and as nobody (setpriv), since a dry run needs no root.
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { binReadableBy, pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { planRequirement, runCommandOf } from "../src/build-plan.js";
import { problemsOf } from "../src/engines/problems.js";
import type { Requirement } from "../src/engines/types.js";
import { freePort } from "./helpers/net.js";
import { startImageServer, type ImageServer } from "./helpers/image-server.js";

const FILE = "2025-12-04-raspios-trixie-arm64-lite.img.xz";
const DOWNLOAD = Buffer.alloc(4096, 7);
const DOWNLOAD_SHA = createHash("sha256").update(DOWNLOAD).digest("hex");
const EXTRACT_SHA = "e".repeat(64);
const isRoot = process.getuid?.() === 0;

const tmp = tempDir("pibake-dry-run-");
let server: ImageServer;
let cfg: string;
let listUrl: string;

beforeAll(async () => {
  server = await startImageServer();
  server.list = {
    os_list: [
      {
        name: "Raspberry Pi OS (other)",
        description: "",
        subitems: [
          {
            name: "Raspberry Pi OS Lite (64-bit)",
            description: "",
            url: `${server.base}/images/raspios_lite_arm64/images/raspios_lite_arm64-2025-12-04/${FILE}`,
            release_date: "2025-12-04",
            extract_sha256: EXTRACT_SHA,
            extract_size: 3 * 1024 ** 3,
            image_download_sha256: DOWNLOAD_SHA,
            image_download_size: DOWNLOAD.length,
          },
        ],
      },
    ],
  };
  listUrl = `${server.base}/os_list.json`;
  // Readable by nobody too: the config and the directory it is in.
  chmodSync(tmp.dir, 0o755);
  cfg = writeJson(path.join(tmp.dir, "broker.json"), validConfig());
  chmodSync(cfg, 0o644);
});
afterAll(async () => {
  await server?.close();
  tmp.cleanup();
});

/** A fresh place for what a build would create, so each test can check that nothing was. */
function places(name: string) {
  const dir = path.join(tmp.dir, name);
  mkdirSync(dir, { recursive: true, mode: 0o777 });
  chmodSync(dir, 0o777);
  return { dir, out: path.join(dir, "deploy"), state: path.join(dir, "state"), cache: path.join(dir, "cache"), home: path.join(dir, "home") };
}

function dryRun(p: ReturnType<typeof places>, extra: string[] = [], env: Record<string, string> = {}) {
  return pibake(["build", cfg, "--dry-run", "--out", p.out, "--state", p.state, ...extra], {
    env: { ...secretEnv, XDG_CACHE_HOME: p.cache, HOME: p.home, PIBAKE_OS_LIST_URL: listUrl, PIBAKE_OFFLINE: "", ...env },
  });
}

function expectNothingMade(p: ReturnType<typeof places>) {
  expect(readdirSync(p.dir)).toEqual([]);
  expect(existsSync(path.join(tmp.dir, ".pibake"))).toBe(false);
}

/** An image cache holding the list's image, as a build would have left it. */
function cacheTheImage(cacheRoot: string) {
  const dir = path.join(cacheRoot, "pibake", "images", DOWNLOAD_SHA);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, FILE), DOWNLOAD);
  const record = {
    name: "Raspberry Pi OS Lite (64-bit)",
    fileName: FILE,
    release: "trixie",
    arch: "arm64",
    releaseDate: "2025-12-04",
    url: `${server.base}/images/${FILE}`,
    downloadSha256: DOWNLOAD_SHA,
    downloadSize: DOWNLOAD.length,
    extractSha256: EXTRACT_SHA,
    extractSize: 3 * 1024 ** 3,
    verifiedAt: "2025-12-05T10:00:00.000Z",
    listUrl,
  };
  writeFileSync(path.join(dir, "image.json"), JSON.stringify(record));
}

const today = () => {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
};

describe("requirements, problems and the plan's lines (pure)", () => {
  const program = (name: string, pkg: string, met?: string): Requirement => ({
    need: name,
    program: { name, package: pkg, neededBy: "pibake build --base" },
    ...(met ? { met } : {}),
  });
  const root: Requirement = { need: "root", root: true, problem: { what: "needs root", fix: "sudo -E" } };

  it("the build's problems: the unmet ones, the missing programs as one line where the first was", () => {
    const reqs = [
      root,
      program("losetup", "mount", "/usr/sbin/losetup"),
      program("mcopy", "mtools"),
      { need: "binfmt", problem: { what: "no qemu" } },
      program("xz", "xz-utils"),
    ];
    expect(problemsOf(reqs)).toEqual([
      { what: "needs root", fix: "sudo -E" },
      { what: "pibake build --base needs mcopy, xz, which are not installed: sudo apt-get install mtools xz-utils" },
      { what: "no qemu" },
    ]);
  });

  it("a dry run notes root and counts the rest", () => {
    expect(planRequirement(root)).toEqual({ need: "root", state: "note", detail: "needs root", fix: "sudo -E" });
    expect(planRequirement(program("mcopy", "mtools"))).toEqual({
      need: "mcopy",
      state: "missing",
      detail: "not installed (Debian package mtools)",
      fix: "sudo apt-get install mtools",
      package: "mtools",
    });
    expect(planRequirement(program("losetup", "mount", "/usr/sbin/losetup"))).toMatchObject({
      state: "ok",
      detail: "/usr/sbin/losetup (Debian package mount)",
    });
  });

  it("the command that runs the plan", () => {
    expect(runCommandOf(["build", "my broker.json", "--dry-run", "--json", "--base", "raspios@2025-12-04"])).toBe(
      "sudo -E pibake build 'my broker.json' --base raspios@2025-12-04",
    );
  });
});

describe("pibake build --dry-run", () => {
  it.skipIf(!isRoot)("as root: the official image to download, the steps, the names, every requirement; exit 0 and nothing made", async () => {
    const p = places("root-default");
    const asked = server.requests.length;
    const r = await dryRun(p);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const text = r.stdout;
    expect(text).toMatch(/^engine +base: from the official Raspberry Pi OS Lite$/m);
    expect(text).toContain(`base image  Raspberry Pi OS Lite (64-bit): ${FILE}, released 2025-12-04, 4.0 KiB to download`);
    expect(text).toContain(`not in the image cache yet: the build downloads and verifies it into ${path.join(p.cache, "pibake", "images")}`);
    expect(text).toMatch(/^steps +1\. render, 2\. download base, 3\. prepare base, 4\. packages, 5\. overlay, 6\. finalize, 7\. deliver$/m);
    const base = `test-broker-home.freemyip.com-${today()}`;
    for (const f of [`${base}.img.xz`, `${base}.img.xz.sha256`, `${base}.img.bmap`, `${base}.manifest.json`, `${base}.log`, "ca.crt"])
      expect(text).toMatch(new RegExp(`^ +${f.replace(/\./g, "\\.")}$`, "m"));
    expect(text).toContain(`${p.out} (made by the build)`);
    expect(text).toMatch(/^ {2}ok +root +running as root$/m);
    for (const [program, pkg] of [
      ["losetup", "mount"],
      ["e2fsck", "e2fsprogs"],
      ["resize2fs", "e2fsprogs"],
      ["mcopy", "mtools"],
      ["xz", "xz-utils"],
      ["chroot", "coreutils"],
    ]) {
      expect(text).toMatch(new RegExp(`^ {2}ok +${program} +/\\S+/${program} \\(Debian package ${pkg}\\)$`, "m"));
    }
    if (process.arch === "x64") expect(text).toMatch(/^ {2}(ok|MISSING) +qemu-aarch64 in binfmt_misc +/m);
    expect(text).toMatch(/^the plan can run; build with: sudo -E pibake build .*broker\.json --out .*$/m);
    expect(server.requests.slice(asked).map((q) => q.path)).toEqual(["/os_list.json"]);
    expectNothingMade(p);
  });

  it("an image already in the cache is named as such; no download", async () => {
    const p = places("cached");
    cacheTheImage(p.cache);
    const r = await dryRun(p, ["--compress", "zstd"]);
    expect(r.stdout).toContain(`already in the image cache (${path.join(p.cache, "pibake", "images")}): no download`);
    expect(r.stdout).toMatch(/^ +test-broker-home\.freemyip\.com-\d{4}-\d\d-\d\d\.img\.zst$/m);
    expect(r.stdout).toMatch(/^ {2}(ok|MISSING) +zstd +/m);
    // Nothing was added to the cache: no saved list, no partial download.
    expect(readdirSync(path.join(p.cache, "pibake", "images"))).toEqual([DOWNLOAD_SHA]);
  });

  it("PIBAKE_OFFLINE=1 or an unreachable list: says so, uses the cache; with nothing cached it cannot run (exit 2)", async () => {
    const cached = places("offline-cached");
    cacheTheImage(cached.cache);
    const asked = server.requests.length;
    const offline = await dryRun(cached, [], { PIBAKE_OFFLINE: "1" });
    expect(offline.stdout).toContain(`the OS list ${listUrl} could not be asked (PIBAKE_OFFLINE=1)`);
    expect(offline.stdout).toContain(`the build would use the newest cached image that fits: ${FILE}, released 2025-12-04, 4.0 KiB`);
    expect(server.requests.length).toBe(asked);

    const empty = places("unreachable");
    const dead = `http://127.0.0.1:${await freePort()}/os_list.json`;
    const started = Date.now();
    const r = await dryRun(empty, [], { PIBAKE_OS_LIST_URL: dead });
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toContain(`the OS list ${dead} could not be asked (`);
    expect(r.stderr).toContain(`cannot read the OS list ${dead} (`);
    expect(r.stderr).toContain("fix: run again when the list can be reached, or give an image with --base FILE");
    expectNothingMade(empty);
  });

  it("--base FILE: the file, its size and compression, no download step; --base missing.img exits 2", async () => {
    const p = places("base-file");
    const img = path.join(tmp.dir, "base.img");
    writeFileSync(img, Buffer.alloc(1 << 20));
    const r = await dryRun(p, ["--base", img]);
    expect(r.stdout).toContain(`base image  ${img}: 1.0 MiB, not compressed`);
    expect(r.stdout).toMatch(/^steps +1\. render, 2\. prepare base, 3\. packages, 4\. overlay, 5\. finalize, 6\. deliver$/m);
    expect(r.stdout).toMatch(new RegExp(`^engine +base: from ${img.replace(/[.]/g, "\\.")}$`, "m"));

    const missing = await dryRun(p, ["--base", "missing.img"]);
    expect(missing.exitCode).toBe(2);
    expect(missing.stdout).toMatch(/^ {2}MISSING +the base image missing\.img +--base missing\.img: no such file/m);
    expect(missing.stderr).toContain("--base missing.img: no such file; give a Raspberry Pi OS image");
    expectNothingMade(p);
  });

  it("a missing program: exit 2 naming it, its package and the apt-get line", async () => {
    // PATH with node and every program but mtools' (pibake adds the sbin directories itself).
    const p = places("path");
    const bin = path.join(tmp.dir, "bin-no-mtools");
    mkdirSync(bin, { recursive: true });
    for (const program of ["losetup", "mount", "umount", "chroot", "cp", "tar", "e2fsck", "resize2fs", "fstrim", "xz"]) {
      const found = (
        await execa("sh", ["-c", `command -v ${program}`], { reject: false, env: { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" } })
      ).stdout.trim();
      if (found && !existsSync(path.join(bin, program))) symlinkSync(found, path.join(bin, program));
    }
    if (!existsSync(path.join(bin, "node"))) symlinkSync(process.execPath, path.join(bin, "node"));
    const r = await dryRun(p, [], { PATH: bin });
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toMatch(/^ {2}MISSING +mcopy +not installed \(Debian package mtools\)$/m);
    expect(r.stdout).toContain("install what is missing: sudo apt-get install mtools");
    expect(r.stderr).toContain("needs mcopy, mdel, mmd, mdeltree, which are not installed: sudo apt-get install mtools");
    expectNothingMade(p);
  });

  it("--json prints the plan as JSON; --json alone is a usage error", async () => {
    const p = places("json");
    const r = await dryRun(p, ["--base", "missing.img", "--json"]);
    expect(r.exitCode).toBe(2);
    const plan = JSON.parse(r.stdout);
    expect(plan).toMatchObject({ engine: { id: "base" }, canRun: false, base: { kind: "file", problem: "no such file" } });
    expect(plan.steps).toEqual(["render", "prepare base", "packages", "overlay", "finalize", "deliver"]);
    expect(plan.out.files).toContain("ca.crt");
    expect(plan.requirements.find((q: { need: string }) => q.need === "losetup")).toMatchObject({ package: "mount" });
    const alone = await pibake(["build", cfg, "--json"], { env: secretEnv });
    expect(alone.exitCode).toBe(2);
    expect(alone.stderr).toContain("--json goes with --dry-run");
    expectNothingMade(p);
  });

  it("validates the config first: the same errors as validate, exit 2", async () => {
    const p = places("invalid");
    const bad = validConfig();
    bad.network.gateway = "10.0.0.1";
    const file = writeJson(path.join(tmp.dir, "bad.json"), bad);
    const r = await pibake(["build", file, "--dry-run", "--out", p.out, "--state", p.state], {
      env: { ...secretEnv, PIBAKE_OFFLINE: "1", XDG_CACHE_HOME: p.cache },
    });
    const validate = await pibake(["validate", file], { env: secretEnv });
    expect(r.exitCode).toBe(2);
    expect(validate.exitCode).toBe(2);
    expect(r.stderr).toBe(validate.stderr);
    expect(r.stdout).toBe("");
    expectNothingMade(p);
  });
});

describe.skipIf(!isRoot)("pibake build --dry-run as a user who is not root", () => {
  let bin = path.join(repoRoot, "bin/pibake.js");
  const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];

  beforeAll(async () => {
    bin = await binReadableBy(asNobody, tmp.dir);
  }, 120_000);

  it("says the build needs root and sudo -E as a note, exits 0, and makes nothing", async () => {
    const p = places("nobody");
    const r = await execa(asNobody[0]!, [...asNobody.slice(1), process.execPath, bin, "build", cfg, "--dry-run", "--out", p.out, "--state", p.state], {
      reject: false,
      cwd: p.dir,
      env: { ...secretEnv, CI: "true", HOME: p.home, XDG_CACHE_HOME: p.cache, PIBAKE_OS_LIST_URL: listUrl, PIBAKE_OFFLINE: "" },
      stdin: "ignore",
    });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^ {2}note +root +pibake build \(from the official Raspberry Pi OS Lite\) needs root: .* Run it with sudo -E/m);
    expect(r.stdout).toMatch(/^ {2}ok +losetup +/m);
    expect(r.stdout).toContain("not in the image cache yet");
    expect(r.stdout).toMatch(/^the plan can run; build with: sudo -E pibake build /m);
    expectNothingMade(p);
  });

  it("a --base they cannot read is named, exit 2", async () => {
    const p = places("nobody-base");
    const img = path.join(tmp.dir, "private.img");
    writeFileSync(img, Buffer.alloc(4096), { mode: 0o600 });
    const r = await execa(
      asNobody[0]!,
      [...asNobody.slice(1), process.execPath, bin, "build", cfg, "--dry-run", "--base", img, "--out", p.out, "--state", p.state],
      {
        reject: false,
        cwd: p.dir,
        env: { ...secretEnv, CI: "true", HOME: p.home, XDG_CACHE_HOME: p.cache },
        stdin: "ignore",
      },
    );
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toMatch(/^ {2}MISSING +the base image \S+private\.img +cannot open image .*EACCES/m);
    expect(r.stdout).toMatch(/^ {2}note +root +pibake build --base \S+ needs root/m);
    expectNothingMade(p);
  });
});
