import { existsSync, readFileSync, readlinkSync } from "node:fs";
import type { CleanupScope } from "../cleanup.js";
import type { ImageRoot } from "../host/image-root.js";
import { unmountTree } from "../host/mounts.js";
import { runCommand } from "../host/process.js";
import { CHROOT_MOUNTS, chrootShell, mountForChroot } from "./commands.js";

/**
 * The chroot that pi-gen's on_chroot provides: proc, dev, dev/pts, sys, and
 * tmpfs on run and tmp. Everything mounted here is unmounted by the scope,
 * on success, failure and Ctrl-C alike. Each mount point is resolved inside
 * the image: mount follows links, and the image's /proc may be one.
 */
export async function mountChrootFilesystems(root: ImageRoot, scope: CleanupScope): Promise<void> {
  for (const rel of CHROOT_MOUNTS) {
    const target = root.mkdir(rel);
    await runCommand(mountForChroot(rel, target));
    scope.defer(() => unmountTree(target), `unmount ${target}`);
  }
}

/**
 * Keep packages' maintainer scripts from starting services in the chroot
 * (invoke-rc.d asks policy-rc.d; 101 means "not allowed"). Restored afterwards.
 */
export function preventServiceStarts(root: ImageRoot, scope: CleanupScope): void {
  const restore = replaceFile(root, "/usr/sbin/policy-rc.d", "#!/bin/sh\n# pibake: no service starts while the image is being built\nexit 101\n", 0o755);
  scope.defer(restore, "restore policy-rc.d");
}

/** apt inside the chroot needs a resolver; the image's own resolv.conf may be a dangling link to NetworkManager's. */
export function provideResolvConf(root: ImageRoot, scope: CleanupScope): void {
  const host = existsSync("/etc/resolv.conf") ? readFileSync("/etc/resolv.conf") : Buffer.from("nameserver 9.9.9.9\n");
  const restore = replaceFile(root, "/etc/resolv.conf", host, 0o644);
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
export function holdBuildTimeSettings(root: ImageRoot, scope: CleanupScope): void {
  const preload = "/etc/ld.so.preload";
  if (root.lstat(preload)) {
    const aside = `${preload}.pibake-orig`;
    root.rename(preload, aside);
    scope.defer(() => root.rename(aside, preload), "restore ld.so.preload");
  }
  const settings: [string, RegExp, string][] = [
    ["/etc/initramfs-tools/update-initramfs.conf", /^update_initramfs=.*$/m, "update_initramfs=no"],
    ["/etc/initramfs-tools/initramfs.conf", /^MODULES=dep$/m, "MODULES=most"],
  ];
  for (const [file, setting, value] of settings) {
    const st = root.lstat(file);
    if (!st?.isFile()) continue;
    const text = root.readText(file)!;
    if (!setting.test(text)) continue;
    const restore = replaceFile(root, file, text.replace(setting, value), st.mode & 0o7777);
    scope.defer(restore, `restore ${file}`);
  }
}

/** Put content at a path in the image and return how to put back what was there (a file, a link or nothing). */
function replaceFile(root: ImageRoot, file: string, content: string | Buffer, mode: number): () => void {
  let backup: string | undefined;
  let link: string | undefined;
  const st = root.lstat(file);
  if (st?.isSymbolicLink()) {
    link = readlinkSync(root.linkPath(file));
    root.remove(file);
  } else if (st) {
    backup = `${file}.pibake-orig`;
    root.rename(file, backup);
  }
  root.replace(file, content, mode);
  return () => {
    root.remove(file);
    if (link !== undefined) root.symlink(file, link);
    else if (backup) root.rename(backup, file);
  };
}

export interface ChrootRun {
  /** A script fed to `bash -e` inside the chroot, as pi-gen's on_chroot does. */
  script: string;
  /** What the script is for, named when it fails. */
  what?: string;
  env?: Record<string, string>;
  signal?: AbortSignal;
  onLine?: (line: string) => void;
}

export async function runInChroot(rootfs: string, chroot: ChrootRun): Promise<void> {
  await runCommand(chrootShell(rootfs, chroot.what ?? "running a script in the image's chroot", chroot.env), {
    input: chroot.script,
    extendEnv: false,
    signal: chroot.signal,
    onLine: chroot.onLine,
    failure: (exit, tail) => `${chroot.what ? `${chroot.what}: ` : ""}a command in the image's chroot failed (${exit}):\n${tail}`,
  });
}
