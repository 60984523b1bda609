import { PibakeError } from "../../errors.js";
import type { Compression } from "../../image/compression.js";

export { binfmtProblem, parseBinfmtEntry, runsNatively } from "../binfmt.js";

/** Programs the base-image engine runs, whatever the base. */
export const BASE_PROGRAMS = ["losetup", "mount", "umount", "chroot", "cp", "tar", "e2fsck", "resize2fs", "mcopy", "mdel", "mmd", "mdeltree", "fstrim"];

// gzip and zip are read in-process (zlib, yauzl).
const DECOMPRESSOR: Partial<Record<Compression, string>> = { xz: "xz", zstd: "zstd" };

/** Every program a build from a base compressed so runs. */
export function basePrograms(baseCompression: Compression, shrink: boolean): string[] {
  const extra = [DECOMPRESSOR[baseCompression], shrink ? "resize2fs" : undefined].filter((x): x is string => !!x);
  return [...new Set([...BASE_PROGRAMS, ...extra])];
}

/**
 * Root, named as the user asked for the build: the default build gives no
 * --base, so the message must not speak of one. sudo -E keeps the environment
 * variables the config's secrets come from.
 */
export function checkRoot(base: string | undefined, uid = process.getuid?.()): void {
  if (uid === 0) return;
  const asked = base === undefined || base === "raspios" ? "pibake build (from the official Raspberry Pi OS Lite)" : `pibake build --base ${base}`;
  throw new PibakeError(
    `${asked} needs root: it attaches the image's partitions to loop devices, mounts them and runs the stage in a chroot. ` +
      `Run it with sudo -E (-E keeps the environment variables the config's secrets come from)`,
  );
}

/** Feature bits that e2fsprogs names only in versions newer than some build hosts have: e2fsck prints FEATURE_<C|I|R><bit> for those it does not know. */
const NEWER_EXT4_FEATURES: Record<string, { name: string; since: string }> = {
  FEATURE_C10: { name: "fast_commit", since: "1.46" },
  FEATURE_C11: { name: "stable_inodes", since: "1.46" },
  FEATURE_C12: { name: "orphan_file", since: "1.47" },
  FEATURE_R16: { name: "orphan_present", since: "1.47" },
};

/** The features e2fsck says it cannot handle ("… has unsupported feature(s): FEATURE_C12 …"), by name where pibake knows it. */
export function unsupportedExt4Features(e2fsckOutput: string): string[] {
  const m = /has unsupported feature\(s\):([^\n]*)/.exec(e2fsckOutput);
  if (!m) return [];
  return m[1]!
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map((f) => {
      const known = NEWER_EXT4_FEATURES[f];
      return known ? `${known.name} (e2fsprogs ${known.since} or newer)` : f;
    });
}

export function ext4FeaturesProblem(label: string, e2fsckOutput: string): string | undefined {
  const features = unsupportedExt4Features(e2fsckOutput);
  if (features.length === 0) return undefined;
  const version = /e2fsck (\d+\.\d+(?:\.\d+)?)/.exec(e2fsckOutput)?.[1];
  return (
    `${label}: the root file system uses ext4 features that this machine's e2fsprogs${version ? ` (${version})` : ""} cannot check or resize: ${features.join(", ")}. ` +
    `Build on a machine with a newer e2fsprogs (Debian 12 and Ubuntu 24.04 have 1.47)`
  );
}
