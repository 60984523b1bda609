import { accessSync, constants } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";

/** The Debian package that has each program, for "X is not installed" messages. */
export const DEBIAN_PACKAGE: Record<string, string> = {
  losetup: "mount",
  mount: "mount",
  umount: "mount",
  fstrim: "util-linux",
  chroot: "coreutils",
  cp: "coreutils",
  tar: "tar",
  e2fsck: "e2fsprogs",
  resize2fs: "e2fsprogs",
  dumpe2fs: "e2fsprogs",
  mcopy: "mtools",
  mdir: "mtools",
  mdel: "mtools",
  mmd: "mtools",
  mdeltree: "mtools",
  xz: "xz-utils",
  zstd: "zstd",
  zerofree: "zerofree",
};

const SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/** PATH with the sbin directories, which a user's PATH may lack even under sudo. */
export function toolPath(): string {
  const dirs = (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":").filter(Boolean);
  for (const d of SBIN) if (!dirs.includes(d)) dirs.push(d);
  return dirs.join(":");
}

export function findProgram(name: string): string | undefined {
  for (const dir of toolPath().split(":")) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

export function debianPackage(program: string): string {
  return DEBIAN_PACKAGE[program] ?? program;
}

/** The apt-get line that installs these programs, each package once. */
export function aptGetInstall(programs: readonly string[]): string {
  return `sudo apt-get install ${[...new Set(programs.map(debianPackage))].join(" ")}`;
}

/** The missing programs as one message with the apt-get line that installs them. */
export function missingProgramsMessage(missing: readonly string[], why: string): string {
  return `${why} needs ${missing.join(", ")}, which ${missing.length === 1 ? "is" : "are"} not installed: ${aptGetInstall(missing)}`;
}

/** Every missing program, as one message with the apt-get line that installs them. */
export function requirePrograms(names: string[], why: string): void {
  const missing = names.filter((n) => !findProgram(n));
  if (missing.length > 0) throw new PibakeError(missingProgramsMessage(missing, why));
}
