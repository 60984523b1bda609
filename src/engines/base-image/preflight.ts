import { PibakeError } from "../../errors.js";
import type { Compression } from "../../image/compression.js";
import { requirePrograms } from "./tools.js";
import { binfmtProblem } from "../binfmt.js";

export { binfmtProblem, parseBinfmtEntry, runsNatively } from "../binfmt.js";

/** Programs the base-image engine runs, whatever the base. */
export const BASE_PROGRAMS = ["losetup", "mount", "umount", "chroot", "cp", "tar", "e2fsck", "resize2fs", "mcopy", "mdel", "mmd", "mdeltree", "fstrim"];

const DECOMPRESSOR: Partial<Record<Compression, string>> = { xz: "xz", zstd: "zstd", zip: "unzip" };

export function checkPrograms(baseCompression: Compression, shrink: boolean): void {
  const extra = [DECOMPRESSOR[baseCompression], shrink ? "resize2fs" : undefined].filter((x): x is string => !!x);
  requirePrograms([...BASE_PROGRAMS, ...extra], "pibake build --base");
}

export function checkRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new PibakeError("pibake build --base needs root: it attaches the image's partitions to loop devices, mounts them and runs the stage in a chroot. Run it with sudo");
  }
}

export function checkBinfmt(imageArch: string): void {
  const problem = binfmtProblem(imageArch);
  if (problem) throw new PibakeError(problem);
}
