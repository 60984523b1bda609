import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { X509Certificate } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { bin, pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { bootFile, expectOverlayInRoot, mountRoot } from "./helpers/image.js";
import { bootVm, diskIdentifier, waitForBroker, type Vm } from "./helpers/qemu.js";
import { roundTrip, tryConnect } from "./helpers/mqtt.js";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render, type Rendered } from "../src/render/index.js";
import { listLoops } from "../src/host/loop.js";
import { mountsBelow } from "../src/host/mounts.js";
import { releaseBelow } from "../src/host/release.js";

/**
 * `pibake build` through the real pi-gen, twice: a first build, then a
 * regeneration for a new domain that must reuse the base stage and rebuild
 * only stage-pibake and the export. The exported image is read back
 * (partition table, boot files, the rendered files with owners and modes in
 * the root partition) and booted under QEMU, where the broker must answer
 * over TLS for the new domain.
 *
 * Runs only with PIBAKE_PIGEN_DIR set to a pi-gen checkout on the arm64
 * branch, as root, with qemu-aarch64 registered in binfmt_misc. Test
 * scaffolding, none of it part of what pibake runs for users:
 * - test/fixtures/pi-gen/debian-base replaces stage0-2 (--base-stages):
 *   Raspberry Pi's archive is out of reach here.
 * - test/fixtures/pi-gen/bin goes first in PATH: losetup --partscan through
 *   partx, vfat mounts emulated with mtools, qemu-arm for pi-gen's depends.
 * pi-gen's work directory is kept in $PIBAKE_TEST_CACHE/pi-gen (the base
 * stage takes about 10 minutes); PIBAKE_PIGEN_CLEAN=1 makes the first build
 * start from scratch.
 */
const piGenDir = process.env.PIBAKE_PIGEN_DIR;
const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64");
const CACHE = process.env.PIBAKE_TEST_CACHE ?? "/var/cache/pibake-test";
const SCAFFOLDING = path.join(repoRoot, "test/fixtures/pi-gen");
const DOMAIN = "home.freemyip.com";
const NEW_DOMAIN = "cabin.freemyip.com";

describe.skipIf(!piGenDir || !isRoot || !hasBinfmt)("pibake build through the real pi-gen (PIBAKE_PIGEN_DIR)", () => {
  const tmp = tempDir("pibake-pigen-");
  const state = () => path.join(tmp.dir, "state");
  const env = {
    ...secretEnv,
    PATH: `${path.join(SCAFFOLDING, "bin")}:${process.env.PATH}`,
    XDG_CACHE_HOME: path.join(CACHE, "pi-gen"),
  };
  const runs: { output: string; ms: number; out: string; image: string }[] = [];
  let rendered: Rendered;
  let vm: Vm | undefined;

  const config = (domain: string, name = "pigen-test") => {
    const c = validConfig();
    c.image.name = name;
    c.tls.domain = domain;
    // QEMU's user-mode network, so that the booted image's static address works.
    c.network = { interface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] };
    // Node-RED's stage is built and booted by base-image.test.ts and boot.test.ts (examples/broker.json); pi-gen's own run is long enough without it.
    c.nodeRed = { enabled: false };
    c.mqtt.users[1].topics.push({ access: "readwrite", topic: "home/commands/+" });
    return writeJson(path.join(tmp.dir, `${name}-${domain}.json`), c);
  };

  const buildArgs = (domain: string, out: string, o: { name?: string; baseStage?: string } = {}) => [
    "build",
    config(domain, o.name),
    "--pi-gen",
    piGenDir!,
    "--base-stages",
    o.baseStage ?? path.join(SCAFFOLDING, "debian-base"),
    "--out",
    out,
    "--state",
    state(),
    "--compress",
    "none",
    "--log-format",
    "plain",
  ];
  const build = async (domain: string, extra: string[]) => {
    const out = path.join(tmp.dir, `deploy-${runs.length + 1}`);
    const t0 = Date.now();
    const r = await pibake([...buildArgs(domain, out), ...extra], { env, timeout: 5_400_000 });
    const output = `${r.stdout}\n${r.stderr}`;
    expect(r.exitCode, output).toBe(0);
    const image = path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!);
    runs.push({ output, ms: Date.now() - t0, out, image });
  };

  beforeAll(async () => {
    await build(DOMAIN, process.env.PIBAKE_PIGEN_CLEAN === "1" ? ["--clean"] : []);
    await build(NEW_DOMAIN, []);
    console.log(
      `pi-gen: first build ${(runs[0]!.ms / 1000).toFixed(0)} s (${/full build: /.test(runs[0]!.output) ? "full" : "regeneration"}), regeneration for a new domain ${(runs[1]!.ms / 1000).toFixed(0)} s`,
    );
    const { model } = loadConfig(path.join(tmp.dir, `pigen-test-${NEW_DOMAIN}.json`), { ...secretEnv });
    rendered = await render(model, await prepareSecrets(model, new StateDir(state())));
  }, 10_800_000);

  afterAll(async () => {
    await vm?.kill();
    await releaseBelow(tmp.dir);
    tmp.cleanup();
  });

  it("names the pi-gen commit, and regenerates a new domain's image from the kept base stage", async () => {
    const commit = (await execa("git", ["-C", piGenDir!, "rev-parse", "HEAD"])).stdout.trim();
    for (const run of runs) expect(run.output).toContain(`pi-gen arm64 at ${commit.slice(0, 12)}`);
    expect(runs[1]!.output).toMatch(/regenerating: .*stage0-2 are reused/);
    // Only stage-pibake and the export ran the second time.
    const log = readFileSync(path.join(runs[1]!.out, readdirSync(runs[1]!.out).find((f) => f.endsWith(".log"))!), "utf8");
    expect(log).not.toMatch(/Begin \S+\/stage-base0\/prerun\.sh/);
    expect(log).toMatch(/Begin \S+\/stage-pibake\/00-broker\/02-run-chroot\.sh/);
    expect(log).toMatch(/End \S+\/export-image$/m);
    expect(runs[1]!.output).toMatch(/pi-gen: full build .* regeneration/);
    if (/full build: /.test(runs[0]!.output)) expect(runs[1]!.ms).toBeLessThan(runs[0]!.ms);
  });

  it("delivers the image with its checksum, block map, log, CA and a manifest naming pi-gen's branch and commit", async () => {
    const { out, image } = runs[1]!;
    const b = path.basename(image, ".img");
    expect(b).toMatch(new RegExp(`^pigen-test-${NEW_DOMAIN.replace(/\./g, "\\.")}-\\d{4}-\\d\\d-\\d\\d$`));
    expect(readdirSync(out).sort()).toEqual(["ca.crt", `${b}.img`, `${b}.img.bmap`, `${b}.img.sha256`, `${b}.log`, `${b}.manifest.json`]);
    expect((await execa("sha256sum", ["-c", `${b}.img.sha256`], { cwd: out })).stdout).toBe(`${b}.img: OK`);
    const m = JSON.parse(readFileSync(path.join(out, `${b}.manifest.json`), "utf8"));
    expect(m.engine).toMatchObject({
      engine: "pi-gen",
      piGenBranch: "arm64",
      piGenCommit: (await execa("git", ["-C", piGenDir!, "rev-parse", "HEAD"])).stdout.trim(),
      runner: "native",
      regeneration: true,
    });
    expect(m.domain).toBe(NEW_DOMAIN);
    // The same CA for both domains: clients keep trusting it.
    expect(readFileSync(path.join(out, "ca.crt"), "utf8")).toBe(readFileSync(path.join(runs[0]!.out, "ca.crt"), "utf8"));
  });

  it("has pi-gen's partition table and boot partition, with PARTUUIDs filled in", async () => {
    const { image } = runs[1]!;
    const table = JSON.parse((await execa("sfdisk", ["--json", image])).stdout).partitiontable;
    expect(table.label).toBe("dos");
    expect(table.partitions.map((p: { start: number; type: string }) => [p.start, p.type])).toEqual([
      [16384, "c"],
      [16384 + 1048576, "83"],
    ]);
    const id = diskIdentifier(image);
    expect(bootFile(image, "cmdline.txt")).toMatch(new RegExp(`root=PARTUUID=${id}-02 `));
    expect(bootFile(image, "issue.txt")).toMatch(/Generated using pi-gen/);
    const boot = table.partitions[0];
    const info = await execa("minfo", ["-i", `${image}@@${boot.start * 512}`, "::"], { env: { MTOOLS_SKIP_CHECK: "1" } });
    expect(info.stdout).toMatch(/disk label="bootfs\s*"/);
  });

  it("has every rendered file in the root partition with its content, owner and mode, and the services enabled", async () => {
    const mnt = path.join(tmp.dir, "root");
    const m = await mountRoot(runs[1]!.image, mnt);
    try {
      expectOverlayInRoot(mnt, rendered);
      const id = diskIdentifier(runs[1]!.image);
      expect(readFileSync(path.join(mnt, "etc/fstab"), "utf8")).toMatch(new RegExp(`^PARTUUID=${id}-02\\s+/\\s+ext4`, "m"));
      for (const unit of ["mosquitto.service", "ddclient.service", "ssh.service"]) {
        // lstat: the links are absolute, and would resolve against this host.
        expect(lstatSync(path.join(mnt, "etc/systemd/system/multi-user.target.wants", unit)).isSymbolicLink(), unit).toBe(true);
      }
      const cert = new X509Certificate(readFileSync(path.join(mnt, "etc/mosquitto/certs/server.crt")));
      expect(cert.subjectAltName).toContain(`DNS:${NEW_DOMAIN}`);
      expect(cert.subjectAltName).not.toContain(`DNS:${DOMAIN}`);
      // pi-gen's throw-away password did not survive: stage-pibake set the configured one.
      const shadow = readFileSync(path.join(mnt, "etc/shadow"), "utf8")
        .split("\n")
        .find((l) => l.startsWith("admin:"))!;
      const check = await execa("python3", [
        "-W",
        "ignore",
        "-c",
        "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])",
        secretEnv.T_USER_PW,
        shadow.split(":")[1]!,
      ]);
      expect(check.stdout).toBe("True");
    } finally {
      await m.release();
    }
  });

  it.skipIf(!hasQemu)(
    "boots under QEMU and serves authenticated MQTT over TLS for the new domain",
    async () => {
      const kernelDir = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/qemu-kernel.sh")], { timeout: 1_800_000 })).stdout.trim();
      vm = await bootVm({ image: runs[1]!.image, kernelDir, consoleLog: path.join(tmp.dir, "console.log"), forward: { mqtts: 8883 } });
      const ca = readFileSync(path.join(runs[1]!.out, "ca.crt"));
      const url = `mqtts://127.0.0.1:${vm.ports.mqtts}`;
      const opts = { ca, servername: NEW_DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW };
      await waitForBroker(vm, url, opts, 420_000);
      console.log(`pi-gen image: power-on to the broker answering over TLS: ${((Date.now() - vm.startedAt) / 1000).toFixed(0)} s`);
      const client = await tryConnect(url, opts);
      expect(client.ok, client.error).toBe(true);
      expect(await roundTrip(client.client!, "home/commands/light", "on")).toBe("on");
      client.client!.end(true);
      const wrong = await tryConnect(url, { ...opts, password: "not-the-password" });
      expect(wrong.ok).toBe(false);
    },
    900_000,
  );

  it("names the stage and script that failed, with the last lines of pi-gen's log and where the full log is", async () => {
    const broken = path.join(tmp.dir, "broken-base");
    mkdirSync(path.join(broken, "00-broken"), { recursive: true });
    writeFileSync(path.join(broken, "00-broken", "00-run.sh"), "#!/bin/bash -e\necho 'this sub-stage fails on purpose' >&2\nexit 3\n", { mode: 0o755 });
    // An image name, and so a work directory, of its own: the kept base stage of the other builds is not touched.
    const r = await pibake(buildArgs("broken.freemyip.com", path.join(tmp.dir, "deploy-broken"), { name: "pigen-broken", baseStage: broken }), {
      env,
      timeout: 600_000,
    });
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/pi-gen failed in stage-base0 › 00-broken › 00-run\.sh \(exit \d+\)/);
    expect(r.stderr).toMatch(/^ {2}\| this sub-stage fails on purpose$/m);
    const kept = /The full log: (\S+)/.exec(r.stderr)?.[1];
    expect(kept && readFileSync(kept, "utf8")).toMatch(/Build failed/);
    expect(mountsBelow(path.join(env.XDG_CACHE_HOME, "pibake/work/pigen-broken"))).toEqual([]);
  }, 700_000);

  it("stops pi-gen on Ctrl-C inside stage-pibake's chroot, releases its mounts and loop devices, and says how to continue", async () => {
    await vm?.kill();
    const workDir = path.join(env.XDG_CACHE_HOME, "pibake/work/pigen-test");
    const out = path.join(tmp.dir, "deploy-interrupted");
    const child = execa(process.execPath, [bin, ...buildArgs("third.freemyip.com", out)], {
      env: { ...env, CI: "true" },
      reject: false,
      all: true,
      stdin: "ignore",
    });
    let output = "";
    child.all?.on("data", (d: Buffer) => (output += d.toString()));
    try {
      // Inside the chroot: pi-gen has mounted /proc and friends below stage-pibake's rootfs.
      const deadline = Date.now() + 900_000;
      while (mountsBelow(path.join(workDir, "stage-pibake")).length === 0) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`pi-gen never entered stage-pibake's chroot:\n${output}`);
        await new Promise((res) => setTimeout(res, 500));
      }
      child.kill("SIGINT");
      const r = await Promise.race([
        child,
        new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`no exit within 3 minutes of SIGINT:\n${output}`)), 180_000)),
      ]);
      expect(r.exitCode, output).toBe(130);
    } finally {
      child.kill("SIGKILL");
    }
    expect(output).toMatch(/interrupted by SIGINT: pi-gen was stopped; its work directory is kept in .*run the same command again to continue/);
    expect(mountsBelow(workDir)).toEqual([]);
    expect(listLoops().filter((l) => l.backingFile.startsWith(`${workDir}/`))).toEqual([]);
    expect(existsSync(out) ? readdirSync(out).filter((f) => !f.startsWith(".")) : []).toEqual([]);
    // Nothing of pi-gen's is still running.
    const left = await execa("pgrep", ["-f", "pi-gen-tree/arm64/build.sh"], { reject: false });
    expect(left.stdout).toBe("");
  }, 1_200_000);
});
