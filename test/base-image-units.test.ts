import { describe, expect, it, afterAll } from "vitest";
import { execa } from "execa";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { tempDir } from "./helpers/cli.js";
import { baseConfig, removeAllFixtures, renderFixture } from "./helpers/render-fixture.js";
import { alignUp, GiB, MiB, parseGrow, parseMinimumBlocks, shrinkTarget } from "../src/engines/base-image/resize.js";
import { parseAptSizes, ROOM_MARGIN, roomForPackages } from "../src/engines/base-image/room.js";
import {
  applySystemSettings,
  bootMountFromFstab,
  cmdlineWithRegdom,
  elfArch,
  enableLocale,
  firstUserOf,
  hostsWithHostname,
  keyboardLayoutOf,
  keyboardWithLayout,
  localeGenLine,
  parseOsRelease,
} from "../src/engines/base-image/system.js";
import { missingPackages, parseDpkgStatus } from "../src/engines/base-image/marker.js";
import { stagePackages } from "../src/render/stage.js";
import { diffTrees, FatPartition, snapshotTree } from "../src/engines/base-image/fat.js";
import { binfmtProblem, checkRoot, ext4FeaturesProblem, runsNatively, unsupportedExt4Features } from "../src/engines/base-image/preflight.js";
import { BuildLog } from "../src/host/log.js";
import { ImageRoot } from "../src/host/image-root.js";
import { checkUsage } from "../src/build.js";
import { systemSettings } from "../src/render/system.js";
import { buildSettings } from "../src/commands/build.js";
import { registerSecret } from "../src/host/redact.js";

/** The base-image engine's pieces that need no root and no image: sizes, file edits, package lists, FAT sync, checks. */
const tmp = tempDir("pibake-base-units-");
afterAll(() => {
  tmp.cleanup();
  removeAllFixtures();
});

describe("sizes", () => {
  it("reads --grow as truncate(1) does, on 4 MiB boundaries", () => {
    expect(parseGrow(undefined)).toBe("auto");
    expect(parseGrow("auto")).toBe("auto");
    expect(parseGrow("0")).toBe(0);
    expect(parseGrow("none")).toBe(0);
    expect(parseGrow("1G")).toBe(GiB);
    expect(parseGrow("1.5GiB")).toBe(1.5 * GiB);
    expect(parseGrow("512M")).toBe(512 * MiB);
    expect(parseGrow("1000K")).toBe(4 * MiB);
    expect(() => parseGrow("lots")).toThrow(/--grow lots: not a size/);
    expect(() => parseGrow("100G")).toThrow(/more than 64 GiB/);
    try {
      parseGrow("x");
    } catch (e) {
      expect((e as { exitCode: number }).exitCode).toBe(2);
    }
  });

  it("reads apt's figures in both of its wordings, and adds the margin", () => {
    // apt 3 (trixie) writes a summary; apt 2 (bookworm) sentences, which test/packages.test.ts has the real apt write.
    const apt3 =
      "Summary:\n  Upgrading: 0, Installing: 62, Removing: 0, Not Upgrading: 0\n  Download size: 41.2 MB\n  Space needed: 173 MB / 1,203 MB available\n";
    expect(parseAptSizes(apt3)).toEqual({ downloadBytes: 41_200_000, installBytes: 173_000_000 });
    const apt2 = "Need to get 0 B/159 MB of archives.\nAfter this operation, 713 MB of additional disk space will be used.\nAbort.\n";
    expect(parseAptSizes(apt2)).toEqual({ downloadBytes: 159_000_000, installBytes: 713_000_000 });
    expect(parseAptSizes("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n")).toEqual({ downloadBytes: 0, installBytes: 0 });
    expect(roomForPackages({ downloadBytes: 0, installBytes: 0 })).toBe(0);
    expect(roomForPackages({ downloadBytes: 100 * MiB, installBytes: 500 * MiB })).toBe(
      100 * MiB + Math.ceil(500 * MiB * (1 + ROOM_MARGIN.fraction)) + ROOM_MARGIN.bytes,
    );
  });

  it("shrinks to the used size plus a margin, never up", () => {
    expect(shrinkTarget(1 * GiB, 4 * GiB)).toBe(GiB + 256 * MiB);
    expect(shrinkTarget(10 * GiB, 40 * GiB)).toBe(alignUp(10 * GiB + GiB));
    expect(shrinkTarget(100 * MiB, 2 * GiB)).toBe(356 * MiB);
    expect(shrinkTarget(1900 * MiB, 2 * GiB)).toBeUndefined();
    expect(parseMinimumBlocks("resize2fs 1.47.0 (5-Feb-2023)\nEstimated minimum size of the filesystem: 123456\n")).toBe(123456);
    expect(() => parseMinimumBlocks("nonsense")).toThrow(/cannot read resize2fs's estimate/);
  });
});

describe("what pi-gen's config does, as file edits", () => {
  it("sets the hostname in /etc/hosts as pi-gen does (127.0.1.1), replacing Raspberry Pi OS's", () => {
    const hosts = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\traspberrypi\n";
    expect(hostsWithHostname(hosts, "broker")).toBe("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\tbroker\n");
    expect(hostsWithHostname("127.0.0.1\tlocalhost\n", "broker")).toBe("127.0.0.1\tlocalhost\n127.0.1.1\tbroker\n");
  });

  it("sets the keyboard layout", () => {
    const kb = 'XKBMODEL="pc105"\nXKBLAYOUT="gb"\nXKBVARIANT=""\n';
    expect(keyboardWithLayout(kb, "de")).toBe('XKBMODEL="pc105"\nXKBLAYOUT="de"\nXKBVARIANT=""\n');
    expect(keyboardLayoutOf(keyboardWithLayout(undefined, "fr"))).toBe("fr");
  });

  it("enables a locale in locale.gen, and says when locale-gen must run", () => {
    expect(localeGenLine("de_DE.UTF-8")).toBe("de_DE.UTF-8 UTF-8");
    expect(localeGenLine("de_DE")).toBe("de_DE ISO-8859-1");
    const gen = "# de_DE.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n";
    expect(enableLocale(gen, "en_GB.UTF-8")).toEqual({ text: gen, changed: false });
    expect(enableLocale(gen, "de_DE.UTF-8")).toEqual({ text: "de_DE.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n", changed: true });
    expect(enableLocale(gen, "fr_FR.UTF-8")).toEqual({ text: `${gen}fr_FR.UTF-8 UTF-8\n`, changed: true });
  });

  it("puts the Wi-Fi country on the kernel command line, once", () => {
    const c = "console=serial0,115200 root=PARTUUID=abcd-02 rootwait\n";
    expect(cmdlineWithRegdom(c, "DE")).toBe("console=serial0,115200 root=PARTUUID=abcd-02 rootwait cfg80211.ieee80211_regdom=DE\n");
    expect(cmdlineWithRegdom(cmdlineWithRegdom(c, "DE"), "FR")).toBe("console=serial0,115200 root=PARTUUID=abcd-02 rootwait cfg80211.ieee80211_regdom=FR\n");
  });

  it("reads the facts of a base: boot mount point, release, architecture, first user", async () => {
    expect(bootMountFromFstab("proc /proc proc defaults 0 0\nPARTUUID=ab-01  /boot/firmware  vfat    defaults 0 2\n")).toBe("/boot/firmware");
    expect(bootMountFromFstab("PARTUUID=ab-01  /boot  vfat    defaults 0 2\n")).toBe("/boot");
    // A mount point that climbs out of /boot is not taken for the boot partition's.
    expect(bootMountFromFstab("PARTUUID=ab-01  /boot/../etc  vfat    defaults 0 2\n")).toBe("/boot/firmware");
    expect(parseOsRelease('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_CODENAME=trixie\n')).toMatchObject({
      VERSION_CODENAME: "trixie",
      PRETTY_NAME: "Debian GNU/Linux 13 (trixie)",
    });
    expect(elfArch(readFileSync("/bin/true").subarray(0, 64))).toBe(process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "arm64" : "armhf");
    const aarch64 = Buffer.alloc(64);
    Buffer.from("7f454c460201010000000000000000000200b700", "hex").copy(aarch64);
    expect(elfArch(aarch64)).toBe("arm64");
    expect(elfArch(Buffer.from("#!/bin/sh\n"))).toBe("unknown");
    expect(firstUserOf("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n")).toEqual({
      name: "pi",
      uid: 1000,
      gid: 1000,
      home: "/home/pi",
    });
  });

  it("renders the chroot part of the system settings from its template: shellcheck-clean, the hash and the keys as given", async () => {
    const f = await renderFixture();
    const root = path.join(tmp.dir, "system-root");
    const boot = path.join(tmp.dir, "system-boot");
    for (const d of ["etc", "usr/share/zoneinfo/Europe", "usr/lib/systemd/system"]) mkdirSync(path.join(root, d), { recursive: true });
    mkdirSync(boot, { recursive: true });
    writeFileSync(path.join(root, "usr/share/zoneinfo/Europe/Berlin"), "TZif");
    writeFileSync(path.join(root, "etc/locale.gen"), "# en_GB.UTF-8 UTF-8\n");
    for (const u of ["ssh.service", "getty@.service"]) writeFileSync(path.join(root, "usr/lib/systemd/system", u), "[Unit]\n");
    const hash = "$6$salt$" + "x".repeat(20) + "'quote";
    const plan = applySystemSettings(new ImageRoot(root), boot, systemSettings(f.model), hash);
    const file = path.join(tmp.dir, "00-run-chroot.sh");
    writeFileSync(file, plan.script);
    const lint = await execa("shellcheck", ["-s", "bash", file], { reject: false });
    expect(`${lint.stdout}${lint.stderr}`).toBe("");
    // bash reads back the name and the hash exactly; the keys land in the here-document one per line.
    const vars = await execa("bash", ["-c", `eval "$(grep -E '^(NAME|HASH)=' "$1")"; printf '%s\\n%s' "$NAME" "$HASH"`, "bash", file]);
    expect(vars.stdout).toBe(`${f.model.user.name}\n${hash}`);
    expect(plan.script).toContain(`<<'PIBAKE_SSH_KEYS'\n${f.model.user.sshKeys.join("\n")}\nPIBAKE_SSH_KEYS\n`);
    expect(plan.script).toMatch(/^locale-gen --keep-existing$/m);
    expect(plan.script).toMatch(/^systemctl enable ssh\.service getty@tty1\.service$/m);
  });

  it("resolves paths inside an image as the image would (absolute links stay inside)", () => {
    const root = path.join(tmp.dir, "rootfs");
    mkdirSync(path.join(root, "usr/bin"), { recursive: true });
    writeFileSync(path.join(root, "usr/bin/bash"), "x");
    return execa("ln", ["-sfn", "/usr/bin", path.join(root, "bin")]).then(() => {
      expect(new ImageRoot(root).path("/bin/bash")).toBe(path.join(root, "usr/bin/bash"));
    });
  });
});

describe("packages", () => {
  it("knows which of the stage's packages dpkg has installed", async () => {
    const status = [
      "Package: mosquitto\nStatus: install ok installed\nArchitecture: arm64\n",
      "Package: ddclient\nStatus: deinstall ok config-files\n",
      "Package: openssl\nStatus: install ok installed\n",
    ].join("\n");
    const installed = parseDpkgStatus(status);
    expect([...installed].sort()).toEqual(["mosquitto", "openssl"]);
    expect(missingPackages(["mosquitto", "ddclient", "openssl:arm64"], installed)).toEqual(["ddclient"]);

    const config = baseConfig();
    config.nodeRed = { enabled: false };
    const fx = await renderFixture({ config });
    expect(stagePackages(fx.rendered)).toEqual([
      "ca-certificates",
      "ddclient",
      "fail2ban",
      "mosquitto",
      "mosquitto-clients",
      "nftables",
      "openssl",
      "python3-systemd",
      "unattended-upgrades",
    ]);
  });
});

describe("the FAT boot partition through mtools", () => {
  it("copies the files out and writes back exactly what changed", async () => {
    const img = path.join(tmp.dir, "boot.img");
    const offset = 1024 * 1024;
    await execa("truncate", ["-s", "80M", img]);
    const fat = path.join(tmp.dir, "fat.vfat");
    await execa("mkfs.vfat", ["-F", "32", "-n", "bootfs", "-C", fat, String(64 * 1024)]);
    await execa("dd", [`if=${fat}`, `of=${img}`, "bs=1M", "seek=1", "conv=notrunc", "status=none"]);
    const env = { MTOOLS_SKIP_CHECK: "1" };
    const drive = `${img}@@${offset}`;
    await execa("mmd", ["-i", drive, "::/overlays", "::/old"], { env });
    for (const [name, text] of [
      ["cmdline.txt", "console=tty1 rootwait\n"],
      ["config.txt", "arm_64bit=1\n"],
      ["userconf.txt", "pi:$6$x\n"],
    ] as const) {
      writeFileSync(path.join(tmp.dir, name), text);
      await execa("mcopy", ["-i", drive, path.join(tmp.dir, name), "::/"], { env });
    }
    writeFileSync(path.join(tmp.dir, "a.dtbo"), "dtbo");
    await execa("mcopy", ["-i", drive, path.join(tmp.dir, "a.dtbo"), "::/overlays/"], { env });
    await execa("mcopy", ["-i", drive, path.join(tmp.dir, "a.dtbo"), "::/old/"], { env });

    const dir = path.join(tmp.dir, "bootdir");
    mkdirSync(dir);
    const part = new FatPartition(img, offset);
    const before = await part.extract(dir);
    expect([...before.keys()].sort()).toEqual(["cmdline.txt", "config.txt", "old", "old/a.dtbo", "overlays", "overlays/a.dtbo", "userconf.txt"]);

    writeFileSync(path.join(dir, "cmdline.txt"), "console=tty1 rootwait cfg80211.ieee80211_regdom=DE\n");
    rmSync(path.join(dir, "userconf.txt"));
    rmSync(path.join(dir, "old"), { recursive: true });
    writeFileSync(path.join(dir, "ssh"), "");
    mkdirSync(path.join(dir, "new/sub"), { recursive: true });
    writeFileSync(path.join(dir, "new/sub/x.bin"), "x");
    const plan = diffTrees(before, snapshotTree(dir));
    expect(plan).toEqual({
      newDirs: ["new", "new/sub"],
      writeFiles: ["cmdline.txt", "new/sub/x.bin", "ssh"],
      removedFiles: ["userconf.txt"],
      removedDirs: ["old"],
    });
    await part.writeBack(dir, before);

    const again = path.join(tmp.dir, "bootdir2");
    mkdirSync(again);
    expect(await new FatPartition(img, offset).extract(again)).toEqual(snapshotTree(dir));
    expect(readFileSync(path.join(again, "cmdline.txt"), "utf8")).toContain("regdom=DE");
    // The file system is still sound.
    await execa("fsck.vfat", ["-n", fat]).catch(() => undefined);
    const check = await execa("mdir", ["-i", drive, "::/"], { env });
    expect(check.stdout).not.toMatch(/userconf/i);
  });

  it("refuses a symbolic link in the boot partition's files", () => {
    const dir = path.join(tmp.dir, "withlink");
    mkdirSync(dir);
    return execa("ln", ["-s", "x", path.join(dir, "link")]).then(() => {
      expect(() => snapshotTree(dir)).toThrow(/\/boot\/firmware\/link is a symbolic link: the boot partition is FAT/);
    });
  });
});

describe("root", () => {
  it("names the build as it was asked for, and sudo -E (the secrets are in the environment)", () => {
    const tail =
      "needs root: it attaches the image's partitions to loop devices, mounts them and runs the stage in a chroot. Run it with sudo -E (-E keeps the environment variables the config's secrets come from)";
    expect(() => checkRoot(undefined, 1000)).toThrow(`pibake build (from the official Raspberry Pi OS Lite) ${tail}`);
    expect(() => checkRoot("raspios@2025-12-04", 1000)).toThrow(`pibake build --base raspios@2025-12-04 ${tail}`);
    expect(() => checkRoot("base.img.xz", 1000)).toThrow(`pibake build --base base.img.xz ${tail}`);
    expect(() => checkRoot(undefined, 0)).not.toThrow();
  });
});

describe("ext4 features the host's e2fsprogs cannot handle", () => {
  // e2fsck's own words (e2fsprogs 1.46.5 on an image made with orphan_file), as unix.c prints them.
  const old = "e2fsck 1.46.5 (30-Dec-2021)\n/dev/loop3 has unsupported feature(s): FEATURE_C12 FEATURE_R16\ne2fsck: Get a newer version of e2fsck!\n";
  it("names the features e2fsprogs prints as bits, with the version that knows them", () => {
    expect(unsupportedExt4Features(old)).toEqual(["orphan_file (e2fsprogs 1.47 or newer)", "orphan_present (e2fsprogs 1.47 or newer)"]);
    expect(unsupportedExt4Features("rootfs: clean, 1234/5678 files\n")).toEqual([]);
    expect(ext4FeaturesProblem("2026-06-18-raspios-trixie-arm64-lite.img.xz", old)).toBe(
      "2026-06-18-raspios-trixie-arm64-lite.img.xz: the root file system uses ext4 features that this machine's e2fsprogs (1.46.5) cannot check or resize: " +
        "orphan_file (e2fsprogs 1.47 or newer), orphan_present (e2fsprogs 1.47 or newer). Build on a machine with a newer e2fsprogs (Debian 12 and Ubuntu 24.04 have 1.47)",
    );
  });
});

describe("qemu-user through binfmt_misc", () => {
  const fake = (entries: Record<string, string>, status = "enabled") => {
    const d = path.join(tmp.dir, `binfmt-${Math.random().toString(36).slice(2)}`);
    mkdirSync(d);
    if (status !== "unmounted") writeFileSync(path.join(d, "status"), `${status}\n`);
    for (const [n, t] of Object.entries(entries)) writeFileSync(path.join(d, n), t);
    return d;
  };
  const aarch64 = (flags: string, enabled = "enabled", interpreter = "/bin/true") =>
    `${enabled}\ninterpreter ${interpreter}\nflags: ${flags}\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n`;

  it("needs nothing on an ARM host", () => {
    expect(runsNatively("arm64", "arm64")).toBe(true);
    expect(runsNatively("armhf", "arm64")).toBe(true);
    expect(runsNatively("arm64", "x64")).toBe(false);
    expect(binfmtProblem("arm64", "/nonexistent", "arm64")).toBeUndefined();
  });

  it("prints the exact fix for each way it can be missing", () => {
    expect(binfmtProblem("arm64", fake({ "qemu-aarch64": aarch64("PF") }), "x64")).toBeUndefined();
    expect(binfmtProblem("arm64", fake({}, "unmounted"), "x64")).toMatch(
      /binfmt_misc is not mounted\. Fix:\n  sudo mount -t binfmt_misc binfmt_misc .*\n  sudo apt-get install qemu-user-static binfmt-support/,
    );
    expect(binfmtProblem("arm64", fake({}), "x64")).toMatch(
      /no entry for arm64 ELF programs\. Fix:\n  sudo apt-get install qemu-user-static binfmt-support.*\n  sudo update-binfmts --enable qemu-aarch64/,
    );
    expect(binfmtProblem("arm64", fake({ "qemu-aarch64": aarch64("PF", "disabled") }), "x64")).toMatch(
      /qemu-aarch64 but it is disabled\. Fix:\n  sudo update-binfmts --enable qemu-aarch64/,
    );
    expect(binfmtProblem("arm64", fake({ "qemu-aarch64": aarch64("P") }), "x64")).toMatch(/lacks the F \(fix binary\) flag/);
    expect(binfmtProblem("arm64", fake({ "qemu-aarch64": aarch64("PF", "enabled", "/no/such/qemu") }), "x64")).toMatch(
      /names \/no\/such\/qemu, which does not exist/,
    );
    expect(binfmtProblem("arm64", fake({}, "disabled"), "x64")).toMatch(/echo 1 \| sudo tee .*status/);
  });

  it("finds this machine's registration when it has one", () => {
    if (!existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64")) return;
    expect(binfmtProblem("arm64")).toBeUndefined();
  });
});

describe("the build log and the command's usage", () => {
  it("redacts every registered secret on its way into the log", () => {
    registerSecret("Log-Secret-Value-42");
    const log = new BuildLog(path.join(tmp.dir, "log", "build.log"));
    log.line("apt said: Log-Secret-Value-42 somewhere");
    log.command("usermod", ["--password", "Log-Secret-Value-42", "admin"]);
    const text = readFileSync(log.file, "utf8");
    expect(text).not.toContain("Log-Secret-Value-42");
    expect(text).toContain("apt said: *** somewhere");
  });

  it("refuses options that do not go together, as usage errors (exit 2)", () => {
    const usage = (o: Parameters<typeof buildSettings>[0]) => {
      try {
        checkUsage(buildSettings(o));
        return "ok";
      } catch (e) {
        return `${(e as { exitCode: number }).exitCode}: ${(e as Error).message}`;
      }
    };
    expect(usage({ base: "x.img", runner: "docker" })).toBe("2: --runner applies to the pi-gen build only (--engine pi-gen), not to builds from an image");
    expect(usage({ base: "x.img", clean: true, piGen: "/p" })).toBe(
      "2: --pi-gen, --clean apply to the pi-gen build only (--engine pi-gen), not to builds from an image",
    );
    expect(usage({ engine: "base", runner: "docker" })).toBe("2: --runner applies to the pi-gen build only (--engine pi-gen), not to builds from an image");
    // Without --base the build starts from the official image; a pi-gen option, or --engine pi-gen, asks for pi-gen.
    expect(usage({ shrink: true })).toBe("ok");
    expect(usage({ runner: "docker", shrink: true })).toBe("2: --shrink applies to builds from an image only, not to pi-gen builds");
    expect(usage({ engine: "pi-gen", base: "raspios" })).toBe("2: --base applies to builds from an image only, not to pi-gen builds");
    expect(usage({ engine: "podman" })).toBe("2: --engine podman: use pi-gen or base");
    expect(usage({ base: "raspios@2025-1-4" })).toBe("2: --base raspios@2025-1-4: give the official release as raspios@YYYY-MM-DD, e.g. raspios@2025-12-04");
    expect(usage({ base: "x.img", osList: "http://127.0.0.1/list.json" })).toBe(
      "2: --os-list applies to builds from the official image only, not with --base FILE",
    );
    expect(usage({ base: "raspios@2025-12-04", osList: "http://127.0.0.1/list.json" })).toBe("ok");
    expect(usage({ compress: "bzip2" })).toBe("2: --compress bzip2: use xz, zstd or none");
    expect(usage({ logFormat: "json" })).toBe("2: --log-format json: use auto or plain");
    expect(usage({ runner: "podman" })).toBe("2: --runner podman: use native or docker");
    expect(usage({ base: "x.img", grow: "1G", shrink: true, compress: "zstd" })).toBe("ok");
  });
});
