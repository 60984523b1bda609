import path from "node:path";
import type { Command } from "../../host/process.js";

/**
 * The programs the base-image engine runs on the working image, as pure
 * command builders: the arguments are decided here and tested as data.
 */

/** e2fsck only reads (-n) and says which features it does not know; any exit code is an answer. */
export const readExt4Features = (dev: string): Command => ({
  cmd: "e2fsck",
  args: ["-n", dev],
  what: "reading the root file system's features",
  okCodes: Array.from({ length: 256 }, (_, i) => i),
});

/** e2fsck -fy: fixes what it can; 0, 1 and 2 mean the file system is now clean. */
export const repairExt4 = (dev: string, what = "checking the root file system"): Command => ({
  cmd: "e2fsck",
  args: ["-f", "-y", dev],
  what,
  okCodes: [0, 1, 2],
});

/** Offline growth to the partition's size: online growth (EXT4_IOC_RESIZE_FS) is refused in some containers and kernels. */
export const growExt4 = (dev: string): Command => ({ cmd: "resize2fs", args: [dev], what: "growing the root file system" });

export const minimumExt4 = (dev: string): Command => ({ cmd: "resize2fs", args: ["-P", dev], what: "estimating the root file system's minimum size" });

/** resize2fs takes K as KiB; the target is a whole number of KiB. */
export const shrinkExt4 = (dev: string, bytes: number): Command => {
  if (bytes % 1024 !== 0) throw new Error(`shrink target ${bytes} is not a whole number of KiB`);
  return { cmd: "resize2fs", args: [dev, `${bytes / 1024}K`], what: `shrinking the root file system to ${bytes / (1024 * 1024)} MiB` };
};

export const mountExt4 = (dev: string, mnt: string, readOnly: boolean): Command => ({
  cmd: "mount",
  args: ["-t", "ext4", ...(readOnly ? ["-o", "ro"] : []), dev, mnt],
  what: `mounting the root partition (${dev})`,
});

/** The image's root, read-only, under a throwaway writable layer: apt may update and simulate there without changing the image. */
export const mountOverlay = (lower: string, upper: string, work: string, target: string): Command => ({
  cmd: "mount",
  args: ["-t", "overlay", "overlay", "-o", `lowerdir=${lower},upperdir=${upper},workdir=${work}`, target],
  what: "mounting a writable layer over the image's root for apt's estimate",
});

export const bindMount = (source: string, target: string, what: string): Command => ({ cmd: "mount", args: ["--bind", source, target], what });

/** fstrim's exit codes: 0 done, 1 and 32 (not supported), 64 (some file systems trimmed): only 0 means the free blocks are holes. */
export const discardFreeBlocks = (mnt: string): Command => ({ cmd: "fstrim", args: ["-v", mnt], what: "discarding free blocks", okCodes: [0, 1, 32, 64] });

export const zeroFreeBlocks = (dev: string): Command => ({ cmd: "zerofree", args: [dev], what: "zeroing free blocks" });

/** One of the image's own programs, to learn before the long work whether they run here (natively or through qemu-user). */
export const tryImageProgram = (rootfs: string): Command => ({
  cmd: "chroot",
  args: [rootfs, "/bin/true"],
  what: "trying one of the image's programs",
  okCodes: "any",
});

/**
 * mtools on the FAT boot partition at its byte offset in the image file
 * (`image@@offset`): no vfat driver, no loop device, no mount. No mtools
 * config of the machine's is read, and no geometry check stops it.
 */
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: "1", MTOOLSRC: "/dev/null" };
const mtools = (cmd: string, drive: string, args: string[], what: string): Command => ({ cmd, args: ["-i", drive, ...args], what, env: MTOOLS_ENV });

/** Every file, recursively (-s), with its times (-m) and attributes (-p), into `dir`; -n: no questions. */
export const copyFatOut = (drive: string, dir: string): Command =>
  mtools("mcopy", drive, ["-s", "-p", "-m", "-n", "::/", `${dir}/`], "copying the boot partition's files out of the image (mtools)");

/** Files of `dir` (paths relative to it) into one directory of the partition (`::/` or `::/overlays/`), overwriting (-o), with their times (-m). */
export const copyFatIn = (drive: string, dir: string, files: string[], target: string): Command =>
  mtools("mcopy", drive, ["-o", "-m", ...files.map((f) => path.join(dir, f)), target], `writing ${files.join(", ")} to the boot partition`);

export const removeFatTree = (drive: string, dir: string): Command => mtools("mdeltree", drive, [`::/${dir}`], `removing ${dir} from the boot partition`);

export const removeFatFiles = (drive: string, files: string[]): Command =>
  mtools(
    "mdel",
    drive,
    files.map((f) => `::/${f}`),
    "removing files from the boot partition",
  );

export const makeFatDir = (drive: string, dir: string): Command => mtools("mmd", drive, [`::/${dir}`], `creating ${dir} on the boot partition`);
