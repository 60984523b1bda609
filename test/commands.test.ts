import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { execa } from "execa";
import {
  bindMount,
  copyFatIn,
  copyFatOut,
  discardFreeBlocks,
  growExt4,
  makeFatDir,
  minimumExt4,
  mountExt4,
  readExt4Features,
  removeFatFiles,
  removeFatTree,
  repairExt4,
  shrinkExt4,
  tryImageProgram,
  zeroFreeBlocks,
} from "../src/engines/base-image/commands.js";
import {
  archiveCommit,
  cloneBranch,
  currentBranch,
  dockerVersion,
  extractTar,
  fetchBranch,
  findContainer,
  findTool,
  headCommit,
  resetToFetched,
  runPiGen,
  stopContainer,
} from "../src/engines/pigen/commands.js";
import { CHROOT_ENV, CHROOT_MOUNTS, chrootShell, hostScript, mountForChroot } from "../src/engines/commands.js";
import { runInChroot } from "../src/engines/chroot.js";
import { aptInstallScript, aptUpdateScript } from "../src/engines/stage-runner.js";
import { compress, decompress, listXz, listZstd, mapExtents, sparseCopy } from "../src/image/commands.js";
import { flushBuffers, listBlockDevicesJson, rereadPartitionTable, updatePartitions } from "../src/flash/commands.js";
import { LSBLK_COLUMNS } from "../src/flash/devices.js";
import { attachLoopDevice, detachLoopDevice, unmount, unmountLazily } from "../src/host/commands.js";
import type { Command } from "../src/host/process.js";
import { npmViewCommand, REGISTRY_WAIT_MS } from "../src/registry/node-red.js";
import { tempDir } from "./helpers/cli.js";

/**
 * What pibake runs, as data: each builder's program, arguments and accepted
 * exit codes, table by table (the engines run them; the build tests run those).
 */
describe("the base-image engine's commands", () => {
  const dev = "/dev/loop7";
  it.each<[string, Command, string, (number[] | "any")?]>([
    ["features, read only", readExt4Features(dev), "e2fsck -n /dev/loop7"],
    ["repair", repairExt4(dev), "e2fsck -f -y /dev/loop7", [0, 1, 2]],
    ["grow to the partition", growExt4(dev), "resize2fs /dev/loop7"],
    ["minimum size", minimumExt4(dev), "resize2fs -P /dev/loop7"],
    ["shrink in KiB", shrinkExt4(dev, 1536 * 1024 * 1024), "resize2fs /dev/loop7 1572864K"],
    ["mount read-only", mountExt4(dev, "/w/root", true), "mount -t ext4 -o ro /dev/loop7 /w/root"],
    ["mount read-write", mountExt4(dev, "/w/root", false), "mount -t ext4 /dev/loop7 /w/root"],
    ["bind", bindMount("/w/boot", "/w/root/boot/firmware", "boot files"), "mount --bind /w/boot /w/root/boot/firmware"],
    ["discard", discardFreeBlocks("/w/root"), "fstrim -v /w/root", [0, 1, 32, 64]],
    ["zero", zeroFreeBlocks(dev), "zerofree /dev/loop7"],
    ["try a program", tryImageProgram("/w/root"), "chroot /w/root /bin/true", "any"],
  ])("%s", (_name, c, line, okCodes) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.what).not.toBe("");
    if (okCodes) expect(c.okCodes).toEqual(okCodes);
    else if (c.cmd !== "e2fsck") expect(c.okCodes).toBeUndefined();
  });

  it.each<[string, Command, string]>([
    ["the boot partition's files out", copyFatOut("/w/image.img@@4194304", "/w/boot"), "mcopy -i /w/image.img@@4194304 -s -p -m -n ::/ /w/boot/"],
    [
      "files into a directory",
      copyFatIn("/w/image.img@@4194304", "/w/boot", ["overlays/a.dtbo", "overlays/b.dtbo"], "::/overlays/"),
      "mcopy -i /w/image.img@@4194304 -o -m /w/boot/overlays/a.dtbo /w/boot/overlays/b.dtbo ::/overlays/",
    ],
    ["a directory removed", removeFatTree("/w/image.img@@4194304", "old"), "mdeltree -i /w/image.img@@4194304 ::/old"],
    ["files removed", removeFatFiles("/w/image.img@@4194304", ["a.txt", "overlays/b.dtbo"]), "mdel -i /w/image.img@@4194304 ::/a.txt ::/overlays/b.dtbo"],
    ["a directory made", makeFatDir("/w/image.img@@4194304", "new"), "mmd -i /w/image.img@@4194304 ::/new"],
  ])("mtools: %s", (_name, c, line) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.env).toEqual({ MTOOLS_SKIP_CHECK: "1", MTOOLSRC: "/dev/null" });
    expect(c.okCodes).toBeUndefined();
  });

  it("names the files it writes to the boot partition by their place there", () => {
    expect(copyFatIn("/w/i@@0", "/w/boot", ["config.txt", "overlays/a.dtbo"], "::/").what).toBe("writing config.txt, overlays/a.dtbo to the boot partition");
  });

  it("accepts every e2fsck answer when it only reads the features", () => {
    expect(readExt4Features(dev).okCodes).toHaveLength(256);
  });

  it("refuses a shrink target that is not whole KiB", () => {
    expect(() => shrinkExt4(dev, 1000)).toThrow(/not a whole number of KiB/);
  });
});

describe("the image's commands", () => {
  it.each<[string, Command, string, (number[] | "any")?]>([
    ["xz to standard output, all cores", decompress("xz", "/i/base.img.xz"), "xz -dc -T0 -- /i/base.img.xz"],
    ["zstd to standard output", decompress("zstd", "/i/base.img.zst"), "zstd -dc -q -- /i/base.img.zst"],
    ["a name that looks like an option", decompress("xz", "-base.img.xz"), "xz -dc -T0 -- -base.img.xz"],
    ["xz from standard input", compress("xz", 4096), "xz -T0 -c -z -"],
    ["zstd from standard input, told the size", compress("zstd", 4096), "zstd -T0 -q -c --stream-size=4096 -"],
    ["xz's sizes", listXz("/i/base.img.xz"), "xz --robot --list -- /i/base.img.xz", "any"],
    ["zstd's sizes", listZstd("/i/base.img.zst"), "zstd -lv -- /i/base.img.zst", "any"],
    [
      "copy, a name that looks like an option",
      sparseCopy("-base.img", "/w/image.img", "copying"),
      "cp --reflink=auto --sparse=always -- -base.img /w/image.img",
    ],
    ["the data's extents", mapExtents("/w/image.img"), "filefrag -s -e /w/image.img", "any"],
  ])("%s", (_name, c, line, okCodes) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.what).not.toBe("");
    expect(c.okCodes).toEqual(okCodes);
  });

  it("maps extents in the C locale, which the parser reads", () => {
    expect(mapExtents("/w/image.img").env).toEqual({ LC_ALL: "C" });
  });
});

describe("the pi-gen engine's commands", () => {
  it.each<[string, Command, string, string, (number[] | "any")?]>([
    ["the branch", currentBranch("/c/pi-gen"), "git -C /c/pi-gen rev-parse --abbrev-ref HEAD", "git rev-parse --abbrev-ref HEAD", "any"],
    ["the commit", headCommit("/c/pi-gen"), "git -C /c/pi-gen rev-parse HEAD", "git rev-parse HEAD", "any"],
    [
      "a shallow clone of one branch",
      cloneBranch("https://github.com/RPi-Distro/pi-gen.git", "arm64", "/c/pi-gen.tmp-1"),
      "git clone --quiet --depth 1 --branch arm64 https://github.com/RPi-Distro/pi-gen.git /c/pi-gen.tmp-1",
      "cloning pi-gen",
      "any",
    ],
    [
      "the branch's newest commit",
      fetchBranch("/c/pi-gen", "arm64"),
      "git -C /c/pi-gen fetch --quiet --depth 1 origin arm64",
      "git fetch --quiet --depth 1 origin arm64",
      "any",
    ],
    ["moved to it", resetToFetched("/c/pi-gen"), "git -C /c/pi-gen reset --quiet --hard FETCH_HEAD", "git reset --quiet --hard FETCH_HEAD", "any"],
    ["the tracked files as a tar", archiveCommit("/c/pi-gen", "abc123"), "git -C /c/pi-gen archive --format=tar abc123", "copying pi-gen's files at abc123"],
    ["unpacked into the tree", extractTar("/w/tree"), "tar -x -C /w/tree", "unpacking pi-gen's files into /w/tree"],
    [
      "a tool of the depends file",
      findTool("qemu-arm-static"),
      `bash -c hash "$1" 2>/dev/null pibake-hash qemu-arm-static`,
      "looking for qemu-arm-static",
      "any",
    ],
    ["Docker's version", dockerVersion(), "docker info --format {{.ServerVersion}}", "asking Docker", "any"],
    ["the container a build left", findContainer("pibake_broker"), "docker ps -a --filter name=^pibake_broker$ -q", "looking for pi-gen's container", "any"],
    ["stopping it", stopContainer("pibake_broker"), "docker stop -t 10 pibake_broker", "stopping pi-gen's container", "any"],
    ["pi-gen natively", runPiGen("native", "/w/config"), "./build.sh -c /w/config", "pi-gen", "any"],
    ["pi-gen in Docker", runPiGen("docker", "/w/config"), "./build-docker.sh -c /w/config", "pi-gen", "any"],
  ])("%s", (_name, c, line, what, okCodes) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.what).toBe(what);
    expect(c.okCodes).toEqual(okCodes);
  });
});

describe("looking for a tool of pi-gen's depends file", () => {
  it("finds what is installed, and reads a name as a name, never as shell text", async () => {
    const ask = async (tool: string) => {
      const c = findTool(tool);
      return (await execa(c.cmd, c.args, { reject: false })).exitCode;
    };
    expect(await ask("sh")).toBe(0);
    expect(await ask("pibake-no-such-tool")).not.toBe(0);
    expect(await ask("sh; exit 0")).not.toBe(0);
  });
});

describe("the build machine's commands", () => {
  it.each<[string, Command, string, (number[] | "any")?]>([
    ["unmount", unmount("/w/root/boot"), "umount /w/root/boot", "any"],
    ["unmount lazily", unmountLazily("/w/root/boot"), "umount --lazy /w/root/boot", "any"],
    [
      "a partition on a loop device",
      attachLoopDevice("/w/image.img", 4194304, 536870912, false, "image.img"),
      "losetup --find --show --offset 4194304 --sizelimit 536870912 /w/image.img",
    ],
    ["read-only", attachLoopDevice("/w/base.img", 0, 512, true, "base.img"), "losetup --find --show --offset 0 --sizelimit 512 --read-only /w/base.img"],
    ["detach", detachLoopDevice("/dev/loop7"), "losetup --detach /dev/loop7"],
  ])("%s", (_name, c, line, okCodes) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.what).not.toBe("");
    expect(c.okCodes).toEqual(okCodes);
  });
});

describe("flash's commands", () => {
  it.each<[string, Command, string]>([
    ["block devices as JSON, in bytes", listBlockDevicesJson(LSBLK_COLUMNS), `lsblk --json -b -o ${LSBLK_COLUMNS}`],
    ["the device's cache dropped", flushBuffers("/dev/sdb"), "blockdev --flushbufs /dev/sdb"],
    ["the partition table reread", rereadPartitionTable("/dev/sdb"), "blockdev --rereadpt /dev/sdb"],
    ["or updated partition by partition", updatePartitions("/dev/sdb"), "partx -u /dev/sdb"],
  ])("%s", (_name, c, line) => {
    expect([c.cmd, ...c.args].join(" ")).toBe(line);
    expect(c.what).not.toBe("");
    expect(c.okCodes).toBe("any");
  });
});

describe("the registry's command", () => {
  it("asks npm once, bounded, for every version with its engines, without an update notice", () => {
    const c = npmViewCommand("@flowfuse/node-red-dashboard");
    expect([c.cmd, ...c.args].join(" ")).toBe(
      `npm view @flowfuse/node-red-dashboard@>=0.0.0 version engines node-red.version --json --fetch-retries=0 --fetch-timeout=${REGISTRY_WAIT_MS}`,
    );
    expect(c.env).toEqual({ npm_config_update_notifier: "false" });
    expect(c.okCodes).toBeUndefined();
  });
});

describe("the stage runner's commands", () => {
  it("mounts what pi-gen's on_chroot mounts", () => {
    expect(CHROOT_MOUNTS.map((m) => [mountForChroot(m, `/w/root/${m}`).cmd, ...mountForChroot(m, `/w/root/${m}`).args].join(" "))).toEqual([
      "mount -t proc proc /w/root/proc",
      "mount --bind /dev /w/root/dev",
      "mount --bind /dev/pts /w/root/dev/pts",
      "mount --bind /sys /w/root/sys",
      "mount -t tmpfs tmpfs /w/root/run",
      "mount -t tmpfs tmpfs /w/root/tmp",
    ]);
  });

  it("runs bash -e in the chroot with pi-gen's environment, the caller's over it", () => {
    const c = chrootShell("/w/root", "installing packages", { LANG: "en_GB.UTF-8", STAGE: "pibake" });
    expect([c.cmd, ...c.args].join(" ")).toBe("chroot /w/root /bin/bash -e");
    expect(c.what).toBe("installing packages");
    expect(c.env).toEqual({ ...CHROOT_ENV, LANG: "en_GB.UTF-8", STAGE: "pibake" });
    expect(c.env?.DEBIAN_FRONTEND).toBe("noninteractive");
  });

  it.skipIf(process.getuid?.() !== 0)("gives a script in the chroot that environment and nothing of this process's (the host's / as the root)", async () => {
    const lines: string[] = [];
    process.env.PIBAKE_TEST_LEAK = "leaked";
    try {
      await runInChroot("/", {
        script: 'echo "$DEBIAN_FRONTEND $HOME $STAGE ${PIBAKE_TEST_LEAK:-none}"\n',
        env: { STAGE: "pibake" },
        onLine: (l) => lines.push(l),
      });
    } finally {
      delete process.env.PIBAKE_TEST_LEAK;
    }
    expect(lines).toEqual(["noninteractive /root pibake none"]);
  });

  it("runs a host script with on_chroot exported, both paths as arguments", async () => {
    const c = hostScript("/w/stage/01-run.sh", "/p/stages/host/on-chroot.sh");
    expect([c.cmd, ...c.args]).toEqual([
      "bash",
      "-c",
      'source "$1" && export -f on_chroot && exec "$2"',
      "run.sh",
      "/p/stages/host/on-chroot.sh",
      "/w/stage/01-run.sh",
    ]);
    const { dir, cleanup } = tempDir("pibake-host-script-");
    try {
      const lib = path.join(dir, "on chroot's lib.sh");
      const script = path.join(dir, "01 run.sh");
      writeFileSync(lib, 'on_chroot() { echo "in the chroot: $*"; }\n');
      writeFileSync(script, "#!/bin/bash -e\non_chroot hello\n", { mode: 0o755 });
      const r = await execa(hostScript(script, lib).cmd, hostScript(script, lib).args);
      expect(r.stdout).toBe("in the chroot: hello");
    } finally {
      cleanup();
    }
  });
});

describe("the stage's apt-get in the chroot", () => {
  it.each([
    [["mosquitto", "ca-certificates"], false, "apt-get -o Acquire::Retries=3 install -y 'mosquitto' 'ca-certificates'\n"],
    [["nodejs"], true, "apt-get -o Acquire::Retries=3 install --no-install-recommends -y 'nodejs'\n"],
  ] as const)("%j (no recommends: %s)", (pkgs, nr, script) => {
    expect(aptInstallScript(pkgs, nr)).toBe(script);
  });

  it("reads back the package names unchanged through bash", async () => {
    const odd = ["libfoo1:arm64", "g++", "name'with'quotes"];
    const r = await execa("bash", ["-c", `apt-get() { shift 2; printf '%s\\n' "$@"; }; ${aptInstallScript(odd, false)}`]);
    expect(r.stdout.split("\n")).toEqual(["install", "-y", ...odd]);
    expect(aptUpdateScript()).toBe("apt-get -o Acquire::Retries=3 update\n");
  });
});
