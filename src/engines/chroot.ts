import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync, chmodSync } from "node:fs";
import path from "node:path";
import type { CleanupScope } from "../cleanup.js";
import { unmountTree } from "../host/mounts.js";
import { run } from "../host/process.js";

/**
 * The chroot that pi-gen's on_chroot provides: proc, dev, dev/pts, sys, and
 * tmpfs on run and tmp. Everything mounted here is unmounted by the scope,
 * on success, failure and Ctrl-C alike.
 */
export async function mountChrootFilesystems(rootfs: string, scope: CleanupScope): Promise<void> {
  const mounts: [string, string[]][] = [
    ["proc", ["-t", "proc", "proc"]],
    ["dev", ["--bind", "/dev"]],
    ["dev/pts", ["--bind", "/dev/pts"]],
    ["sys", ["--bind", "/sys"]],
    ["run", ["-t", "tmpfs", "tmpfs"]],
    ["tmp", ["-t", "tmpfs", "tmpfs"]],
  ];
  for (const [rel, args] of mounts) {
    const target = path.join(rootfs, rel);
    mkdirSync(target, { recursive: true });
    await run("mount", [...args, target], { what: `mounting ${target} for the chroot` });
    scope.defer(() => unmountTree(target), `unmount ${target}`);
  }
}

/**
 * Keep packages' maintainer scripts from starting services in the chroot
 * (invoke-rc.d asks policy-rc.d; 101 means "not allowed"). Restored afterwards.
 */
export function preventServiceStarts(rootfs: string, scope: CleanupScope): void {
  const file = path.join(rootfs, "usr/sbin/policy-rc.d");
  const restore = replaceFile(file, "#!/bin/sh\n# pibake: no service starts while the image is being built\nexit 101\n", 0o755);
  scope.defer(restore, "restore policy-rc.d");
}

/** apt inside the chroot needs a resolver; the image's own resolv.conf may be a dangling link to NetworkManager's. */
export function provideResolvConf(rootfs: string, scope: CleanupScope): void {
  const host = existsSync("/etc/resolv.conf") ? readFileSync("/etc/resolv.conf") : Buffer.from("nameserver 9.9.9.9\n");
  const restore = replaceFile(path.join(rootfs, "etc/resolv.conf"), host, 0o644);
  scope.defer(restore, "restore resolv.conf");
}

/**
 * While a stage runs, the image is kept as pi-gen keeps it during a build: no
 * /etc/ld.so.preload (armhf images preload a library that qemu-user cannot
 * load), and initramfs-tools told not to rebuild the initramfs
 * (update_initramfs=no) and, should a kernel package make one anyway, to
 * include every module (MODULES=most; "dep" would pick the build host's).
 * Each file is put back byte for byte.
 */
export function holdBuildTimeSettings(rootfs: string, scope: CleanupScope): void {
  const preload = path.join(rootfs, "etc/ld.so.preload");
  if (existsSync(preload)) {
    const aside = `${preload}.pibake-orig`;
    renameSync(preload, aside);
    scope.defer(() => renameSync(aside, preload), "restore ld.so.preload");
  }
  const settings: [string, RegExp, string][] = [
    ["etc/initramfs-tools/update-initramfs.conf", /^update_initramfs=.*$/m, "update_initramfs=no"],
    ["etc/initramfs-tools/initramfs.conf", /^MODULES=dep$/m, "MODULES=most"],
  ];
  for (const [rel, setting, value] of settings) {
    const file = path.join(rootfs, rel);
    if (!existsSync(file) || lstatSync(file).isSymbolicLink()) continue;
    const text = readFileSync(file, "utf8");
    if (!setting.test(text)) continue;
    const restore = replaceFile(file, text.replace(setting, value), lstatSync(file).mode & 0o7777);
    scope.defer(restore, `restore /${rel}`);
  }
}

/** Put content at a path and return how to put back what was there (a file, a link or nothing). */
function replaceFile(file: string, content: string | Buffer, mode: number): () => void {
  let backup: string | undefined;
  let link: string | undefined;
  try {
    const st = lstatSync(file);
    if (st.isSymbolicLink()) {
      link = readlinkSync(file);
      rmSync(file);
    } else {
      backup = `${file}.pibake-orig`;
      renameSync(file, backup);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, content);
  chmodSync(file, mode);
  return () => {
    rmSync(file, { force: true });
    if (link !== undefined) symlinkSync(link, file);
    else if (backup) renameSync(backup, file);
  };
}

export interface ChrootRun {
  /** A script fed to `bash -e` inside the chroot, as pi-gen's on_chroot does. */
  script: string;
  env?: Record<string, string>;
  signal?: AbortSignal;
  onLine?: (line: string) => void;
}

const CHROOT_ENV = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  DEBIAN_FRONTEND: "noninteractive",
  DEBCONF_NONINTERACTIVE_SEEN: "true",
  LANG: "C.UTF-8",
  LC_ALL: "C.UTF-8",
  HOME: "/root",
};

export async function runInChroot(rootfs: string, chroot: ChrootRun): Promise<void> {
  await run("chroot", [rootfs, "/bin/bash", "-e"], {
    what: "running a script in the image's chroot",
    input: chroot.script,
    env: { ...CHROOT_ENV, ...chroot.env },
    extendEnv: false,
    signal: chroot.signal,
    onLine: chroot.onLine,
    failure: (exit, tail) => `a command in the image's chroot failed (${exit}):\n${tail}`,
  });
}
