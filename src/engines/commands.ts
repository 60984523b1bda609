import type { Command } from "../host/process.js";

/**
 * What both engines' stage runner starts, as pure command builders: the
 * chroot's mounts, a script in the chroot and a stage's host script, their
 * arguments decided here and tested as data (test/commands.test.ts).
 */

/** What pi-gen's on_chroot mounts, by its place in the image: the kernel's file systems, the host's devices, fresh tmpfs. */
export const CHROOT_MOUNTS = ["proc", "dev", "dev/pts", "sys", "run", "tmp"] as const;
export type ChrootMount = (typeof CHROOT_MOUNTS)[number];

const MOUNT_ARGS: Record<ChrootMount, string[]> = {
  proc: ["-t", "proc", "proc"],
  dev: ["--bind", "/dev"],
  "dev/pts": ["--bind", "/dev/pts"],
  sys: ["--bind", "/sys"],
  run: ["-t", "tmpfs", "tmpfs"],
  tmp: ["-t", "tmpfs", "tmpfs"],
};

/** `target` is where `mount` goes, already resolved inside the image (mount follows links). */
export const mountForChroot = (mount: ChrootMount, target: string): Command => ({
  cmd: "mount",
  args: [...MOUNT_ARGS[mount], target],
  what: `mounting ${target} for the chroot`,
});

/** The environment of a script in the chroot, as pi-gen's: nothing of this process's, no questions from debconf. */
export const CHROOT_ENV: Record<string, string> = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  DEBIAN_FRONTEND: "noninteractive",
  DEBCONF_NONINTERACTIVE_SEEN: "true",
  LANG: "C.UTF-8",
  LC_ALL: "C.UTF-8",
  HOME: "/root",
};

/**
 * `bash -e` inside the chroot, its script on standard input, as pi-gen's
 * on_chroot runs one; `env` over CHROOT_ENV. The caller gives it this
 * environment only (extendEnv: false).
 */
export const chrootShell = (rootfs: string, what: string, env: Record<string, string> = {}): Command => ({
  cmd: "chroot",
  args: [rootfs, "/bin/bash", "-e"],
  what,
  env: { ...CHROOT_ENV, ...env },
});

/**
 * A stage's NN-run.sh on the build machine, with on_chroot exported to it as
 * pi-gen's scripts/common does: both paths are arguments, never shell text.
 */
export const hostScript = (file: string, onChroot: string): Command => ({
  cmd: "bash",
  args: ["-c", 'source "$1" && export -f on_chroot && exec "$2"', "run.sh", onChroot, file],
  what: `running ${file}`,
});
