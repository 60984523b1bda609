/**
 * The rendered apt configuration for unattended-upgrades, read by the real
 * programs in a Debian trixie arm64 root filesystem (the cached fixture with the
 * stage's packages, unattended-upgrades among them, run through qemu-user):
 * `unattended-upgrade --dry-run --debug` names exactly the rendered origins
 * (Debian's own list in 50unattended-upgrades replaced, ${distro_codename}
 * filled in), and apt-config, with Debian's files beside ours, ends up with our
 * periodic settings, reboot policy and dpkg options. The fixture's package
 * lists are from its build: nothing here needs the network, and Raspberry Pi's
 * archive (out of reach here) only has to be named, not fetched. Three local
 * archives stand for the origins: one labelled as Debian's security archive,
 * one as Raspberry Pi's, one as somebody else's, each with a newer version of
 * a package installed in the chroot; the dry run must pick exactly the first two.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { packageList } from "../src/render/stage.js";
import { unmountTree } from "../src/host/mounts.js";
import { FIXTURE_TIMEOUT_MS, repoRoot } from "./helpers/cli.js";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";

const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const APT_CONF = "etc/apt/apt.conf.d/52pibake-unattended-upgrades";

describe.skipIf(!isRoot || !hasBinfmt)("unattended-upgrades reads the rendered apt configuration", () => {
  let rootfs: string;
  let fx: Fixture;
  let withReboot: Fixture;
  const inChroot = (args: string[], timeout = 300_000) =>
    execa("chroot", [rootfs, ...args], {
      reject: false,
      all: true,
      timeout,
      env: { LANG: "C.UTF-8", LC_ALL: "C.UTF-8", PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
    });
  const install = (f: Fixture) => writeFileSync(path.join(rootfs, APT_CONF), f.overlayFile(APT_CONF), { mode: 0o644 });
  /** apt's merged configuration inside the image: Debian's files and ours. */
  const aptConfig = async () => {
    const r = await inChroot(["apt-config", "dump", "--format", "%f=%v%n"], 60_000);
    expect(r.exitCode, r.all).toBe(0);
    return r.stdout.split("\n");
  };

  beforeAll(async () => {
    fx = await renderFixture();
    const c = baseConfig();
    c.updates = { reboot: { time: "04:30" } };
    withReboot = await renderFixture({ config: c });
    // The fixture the stage tests use: the same recipe, so one cached tarball serves both.
    const packages = packageList(fx.stageText("00-broker/00-packages-nr"));
    expect(packages).toContain("unattended-upgrades");
    const fixture = await execa("bash", [path.join(repoRoot, "scripts/fixtures/arm64-rootfs.sh"), "trixie", "systemd", ...packages], {
      timeout: FIXTURE_TIMEOUT_MS,
    });
    rootfs = path.join(tempDir("pibake-uu-"), "root");
    mkdirSync(rootfs);
    await execa("tar", ["--numeric-owner", "-xpf", fixture.stdout.trim(), "-C", rootfs]);
    await addProbeArchives(rootfs);
    // apt knows only the probe archives: Debian's full lists (the fixture's snapshot, with nothing newer than what is installed)
    // would only make every apt run under qemu-user read tens of thousands of packages.
    const lists = path.join(rootfs, "var/lib/apt/lists");
    for (const f of readdirSync(lists, { withFileTypes: true })) if (f.isFile() && f.name !== "lock") rmSync(path.join(lists, f.name));
    for (const f of ["pkgcache.bin", "srcpkgcache.bin"]) rmSync(path.join(rootfs, "var/cache/apt", f), { force: true });
    for (const [rel, args] of [
      ["proc", ["-t", "proc", "proc"]],
      ["dev", ["--bind", "/dev"]],
      ["run", ["-t", "tmpfs", "tmpfs"]],
      ["tmp", ["-t", "tmpfs", "tmpfs"]],
    ] as const) {
      mkdirSync(path.join(rootfs, rel), { recursive: true });
      await execa("mount", [...args, path.join(rootfs, rel)]);
    }
  }, FIXTURE_TIMEOUT_MS + 300_000);

  afterAll(async () => {
    if (rootfs) {
      await unmountTree(rootfs);
      expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(rootfs);
      rmSync(path.dirname(rootfs), { recursive: true, force: true });
    }
    fx?.cleanup();
    withReboot?.cleanup();
    removeAllFixtures();
  });

  it("is installed with Debian's own files, whose origin list ours replaces", () => {
    const debians = readFileSync(path.join(rootfs, "etc/apt/apt.conf.d/50unattended-upgrades"), "utf8");
    // Debian's list has an entry ours has not: it must not survive into the allowed origins.
    expect(debians).toMatch(/^\s*"origin=Debian,codename=\$\{distro_codename\},label=Debian-Security";/m);
    expect(existsSync(path.join(rootfs, "usr/bin/unattended-upgrade"))).toBe(true);
  });

  it("dry-runs with exactly the rendered origins, ${distro_codename} being trixie, and upgrades only what comes from them", async () => {
    install(fx);
    // The probe packages' old versions installed, their archives' lists read (local files only).
    const dpkg = await inChroot(["dpkg", "-i", ...PROBES.map((p) => `/root/probe-debs/${p.name}_1.0_all.deb`)]);
    expect(dpkg.exitCode, dpkg.all).toBe(0);
    const update = await inChroot([
      "apt-get",
      "update",
      "-o",
      "Dir::Etc::SourceList=/etc/apt/sources.list.d/pibake-probe.list",
      "-o",
      "Dir::Etc::SourceParts=-",
      "-o",
      "APT::Get::List-Cleanup=0",
    ]);
    expect(update.exitCode, update.all).toBe(0);
    const r = await inChroot(["unattended-upgrade", "--dry-run", "--debug"]);
    expect(r.exitCode, r.all.slice(-3000)).toBe(0);
    const allowed = /^Allowed origins are: (.*)$/m.exec(r.all)?.[1];
    expect(allowed, r.all.slice(-3000)).toBe(
      "origin=Debian,codename=trixie,label=Debian, origin=Debian,codename=trixie-security,label=Debian-Security, origin=Raspberry Pi Foundation,codename=trixie,label=Raspberry Pi Foundation",
    );
    // Debian's security archive and Raspberry Pi's: upgraded; anybody else's: not.
    const upgraded = /^Packages that will be upgraded: (.*)$/m.exec(r.all)?.[1]?.split(" ").sort();
    expect(upgraded, r.all.slice(-3000)).toEqual(["pibake-probe-rpi", "pibake-probe-security"]);
    // The other one had a newer version too, which apt would install: it was left.
    const policy = await inChroot(["apt-cache", "policy", "pibake-probe-other"], 60_000);
    expect(policy.stdout).toMatch(/Installed: 1\.0\n\s+Candidate: 1\.1\n/);
  }, 720_000);

  it("leaves apt with our periodic settings, the dpkg options that keep pibake's mosquitto.conf, and no automatic reboot", async () => {
    install(fx);
    const conf = await aptConfig();
    expect(conf).toEqual(
      expect.arrayContaining(["APT::Periodic::Update-Package-Lists=1", "APT::Periodic::Unattended-Upgrade=1", "Unattended-Upgrade::Automatic-Reboot=false"]),
    );
    // unattended-upgrades holds back a package whose conffile would prompt, unless dpkg is told to keep ours.
    expect(conf.filter((l) => /^DPkg::Options::=/i.test(l))).toEqual(expect.arrayContaining(["DPkg::Options::=--force-confold"]));
    expect(conf.filter((l) => l.startsWith("Unattended-Upgrade::Automatic-Reboot-Time="))).toEqual([]);
  }, 120_000);

  it("reboots at updates.reboot.time when the config asks", async () => {
    install(withReboot);
    const conf = await aptConfig();
    expect(conf).toEqual(expect.arrayContaining(["Unattended-Upgrade::Automatic-Reboot=true", "Unattended-Upgrade::Automatic-Reboot-Time=04:30"]));
  }, 120_000);

  it("is left out with updates.enabled false: no apt file, no package", async () => {
    const c = baseConfig();
    c.updates = { enabled: false };
    const off = await renderFixture({ config: c });
    try {
      expect(off.rendered.overlay.map((f) => f.path)).not.toContain(APT_CONF);
      expect(packageList(off.stageText("00-broker/00-packages-nr"))).not.toContain("unattended-upgrades");
    } finally {
      off.cleanup();
    }
  });
});

/** Packages in local archives that stand for an origin each: [package, the archive's Origin, Label, Suite and Codename]. */
const PROBES = [
  { name: "pibake-probe-security", origin: "Debian", label: "Debian-Security", codename: "trixie-security" },
  { name: "pibake-probe-rpi", origin: "Raspberry Pi Foundation", label: "Raspberry Pi Foundation", codename: "trixie" },
  { name: "pibake-probe-other", origin: "Somebody Else", label: "Somebody Else", codename: "trixie" },
];

/**
 * Version 1.0 of each probe package in /root/probe-debs, and 1.1 in a flat archive of its own under
 * /srv/pibake-probe/ whose Release file carries the origin's fields, listed in sources.list.d.
 */
async function addProbeArchives(rootfs: string): Promise<void> {
  const build = tempDir("pibake-probe-");
  const debs = path.join(rootfs, "root/probe-debs");
  mkdirSync(debs, { recursive: true });
  const sources: string[] = [];
  for (const p of PROBES) {
    const archive = path.join(rootfs, "srv/pibake-probe", p.name);
    mkdirSync(archive, { recursive: true });
    for (const version of ["1.0", "1.1"]) {
      const pkg = path.join(build, `${p.name}-${version}`);
      mkdirSync(path.join(pkg, "DEBIAN"), { recursive: true });
      writeFileSync(
        path.join(pkg, "DEBIAN/control"),
        `Package: ${p.name}\nVersion: ${version}\nArchitecture: all\nMaintainer: pibake tests <tests@pibake.invalid>\nDescription: stands for a package from ${p.origin}\n`,
      );
      const deb = path.join(version === "1.0" ? debs : archive, `${p.name}_${version}_all.deb`);
      await execa("dpkg-deb", ["--root-owner-group", "--build", pkg, deb], { timeout: 60_000 });
    }
    const deb = `${p.name}_1.1_all.deb`;
    const bytes = readFileSync(path.join(archive, deb));
    writeFileSync(
      path.join(archive, "Packages"),
      `Package: ${p.name}\nVersion: 1.1\nArchitecture: all\nMaintainer: pibake tests <tests@pibake.invalid>\nFilename: ./${deb}\nSize: ${statSync(path.join(archive, deb)).size}\nSHA256: ${createHash("sha256").update(bytes).digest("hex")}\nDescription: stands for a package from ${p.origin}\n`,
    );
    writeFileSync(
      path.join(archive, "Release"),
      `Origin: ${p.origin}\nLabel: ${p.label}\nSuite: ${p.codename}\nCodename: ${p.codename}\nArchitectures: all arm64\n`,
    );
    sources.push(`deb [trusted=yes] file:/srv/pibake-probe/${p.name} ./`);
  }
  writeFileSync(path.join(rootfs, "etc/apt/sources.list.d/pibake-probe.list"), `${sources.join("\n")}\n`);
}
