/**
 * The safety rules of `pibake flash`, as pure functions from what is known
 * about the target to refusal messages. Each message names the device, says
 * why, and says what to do.
 */
import path from "node:path";
import { formatBytes } from "../ui/output.js";
import { describeMounts, flatten, isRemovable, mountsOf, type BlockDevice, type Mounted } from "./devices.js";

/** Mount points that make a disk the running system's. */
export const SYSTEM_MOUNTS = ["/", "/boot", "/boot/firmware", "/boot/efi", "/efi", "/usr"];

export type Target =
  | { kind: "block"; path: string; node: BlockDevice; top: BlockDevice }
  | { kind: "file"; path: string; exists: boolean; sameAsInput?: string }
  | { kind: "missing"; path: string; parentExists: boolean }
  | { kind: "other"; path: string; what: string };

export interface SystemInfo {
  /** maj:min of the device holding /, when / is on a real block device. */
  rootMajMin?: string;
  /** Active swap devices from /proc/swaps. */
  swaps: string[];
  /** The devices (maj:min) whose file systems hold the image and its bmap. */
  inputs?: { what: string; majMin: string }[];
}

export interface TargetCheckOptions {
  force: boolean;
  unmount: boolean;
}

export interface TargetVerdict {
  refusals: string[];
  /** Mounts to undo before writing (only with --unmount). */
  unmount: Mounted[];
}

const DEVICE_NAME = /^(sd[a-z]+|mmcblk\d+|nvme\d+n\d+|loop\d+|vd[a-z]+|hd[a-z]+|xvd[a-z]+|disk\d+)$/;

/** How the running system uses a disk: "/ on /dev/sda2", "swap on /dev/sda3", … */
export function systemUse(top: BlockDevice, system: SystemInfo): string[] {
  const uses: string[] = [];
  for (const d of flatten([top])) {
    for (const m of d.mountpoints) {
      if (SYSTEM_MOUNTS.includes(m)) uses.push(`${m} on ${d.path}`);
      else if (m === "[SWAP]") uses.push(`swap on ${d.path}`);
    }
    if (system.swaps.includes(d.path) && !d.mountpoints.includes("[SWAP]")) uses.push(`swap on ${d.path}`);
    if (system.rootMajMin && d.majMin === system.rootMajMin && !d.mountpoints.includes("/")) uses.push(`/ on ${d.path}`);
  }
  return uses;
}

/**
 * A refusal of what was named rather than of the disk's state: no such
 * device, a directory, the image itself, a partition. Those are usage errors
 * (exit 2); a card that is read-only, mounted or too small is not.
 */
export function isNamingMistake(target: Target): boolean {
  if (target.kind === "block") return target.node !== target.top || (target.node.type !== "disk" && target.node.type !== "loop");
  return target.kind !== "file" || target.sameAsInput !== undefined;
}

export function checkTarget(target: Target, imageSize: number | undefined, opts: TargetCheckOptions, system: SystemInfo): TargetVerdict {
  const none: Mounted[] = [];
  switch (target.kind) {
    case "missing": {
      const base = path.basename(target.path);
      if (target.path.startsWith("/dev/")) {
        return {
          refusals: [`${target.path} does not exist: check the name, or run "pibake flash IMAGE" without a device to list removable ones`],
          unmount: none,
        };
      }
      if (!target.path.includes("/") && DEVICE_NAME.test(base)) {
        return { refusals: [`${target.path} is not a file here: did you mean /dev/${base}?`], unmount: none };
      }
      if (!target.parentExists) {
        return { refusals: [`cannot create ${target.path}: directory ${path.dirname(target.path)} does not exist`], unmount: none };
      }
      return { refusals: [], unmount: none };
    }
    case "other":
      return { refusals: [`${target.path} is ${target.what}, not a disk or a regular file: name a whole disk such as /dev/sdb, or a file`], unmount: none };
    case "file":
      if (target.sameAsInput) {
        return { refusals: [`${target.path} is the ${target.sameAsInput} itself: choose another target`], unmount: none };
      }
      return { refusals: [], unmount: none };
    case "block":
      return checkBlock(target, imageSize, opts, system);
  }
}

function checkBlock(target: Extract<Target, { kind: "block" }>, imageSize: number | undefined, opts: TargetCheckOptions, system: SystemInfo): TargetVerdict {
  const { node, top } = target;
  const none: Mounted[] = [];
  if (node !== top) {
    const what = node.type === "part" ? "a partition" : `a ${node.type} device`;
    return { refusals: [`${node.path} is ${what} on ${top.path}: name the whole disk (${top.path}), not a part of it`], unmount: none };
  }
  if (node.type !== "disk" && node.type !== "loop") {
    return { refusals: [`${node.path} is a ${node.type} device: pibake writes to whole disks only`], unmount: none };
  }
  const uses = systemUse(node, system);
  if (uses.length > 0) {
    // Not even --force: there is no good reason to overwrite the disk one is running from.
    return { refusals: [`${node.path} holds the running system (${uses.join(", ")}): refusing to overwrite it; choose another device`], unmount: none };
  }
  const holding = flatten([node]).flatMap((d) => (system.inputs ?? []).filter((i) => i.majMin === d.majMin).map((i) => `the ${i.what} is on ${d.path}`));
  if (holding.length > 0) {
    return { refusals: [`${node.path} holds what is to be written (${holding.join(", ")}): copy the image to another disk first`], unmount: none };
  }
  const refusals: string[] = [];
  if (node.readOnly) refusals.push(`${node.path} is read-only: if it is an SD card, slide its lock switch to unlocked and insert it again`);
  if (node.size === 0) refusals.push(`${node.path} has no medium (size 0): insert the card`);
  else if (imageSize !== undefined && node.size < imageSize) {
    refusals.push(`${node.path} (${formatBytes(node.size)}) is smaller than the image (${formatBytes(imageSize)}): use a larger card`);
  }
  const mounts = mountsOf(node);
  if (mounts.length > 0 && !opts.unmount) {
    refusals.push(`${node.path} has mounted partitions (${describeMounts(mounts)}): unmount them or pass --unmount`);
  }
  if (!isRemovable(node) && !opts.force) {
    const kind = node.type === "loop" ? "a loop device" : `a fixed disk${node.tran ? ` (${node.tran})` : ""}`;
    refusals.push(`${node.path} is not a removable disk but ${kind}: check the name, and pass --force if you really mean to overwrite it`);
  }
  return { refusals, unmount: opts.unmount && refusals.length === 0 ? mounts : none };
}
