import type { Command } from "./process.js";

/**
 * The build machine's own programs (mounts, loop devices), as pure command
 * builders: the arguments are decided here and tested as data
 * (test/commands.test.ts). Unmounting is judged by the caller, who knows
 * whether to try again lazily or to stop.
 */

export const unmount = (mountpoint: string): Command => ({ cmd: "umount", args: [mountpoint], what: `unmounting ${mountpoint}`, okCodes: "any" });

/** Detached now, cleaned up once nothing uses it: the last resort, so that clean-up never hangs. */
export const unmountLazily = (mountpoint: string): Command => ({
  cmd: "umount",
  args: ["--lazy", mountpoint],
  what: `unmounting ${mountpoint} lazily`,
  okCodes: "any",
});

/** A free loop device over `size` bytes of `file` from `offset` (one partition), its name on standard output. */
export const attachLoopDevice = (file: string, offset: number, size: number, readOnly: boolean, name: string): Command => ({
  cmd: "losetup",
  args: ["--find", "--show", "--offset", String(offset), "--sizelimit", String(size), ...(readOnly ? ["--read-only"] : []), file],
  what: `attaching ${name} (bytes ${offset}+${size}) to a loop device`,
});

export const detachLoopDevice = (dev: string): Command => ({ cmd: "losetup", args: ["--detach", dev], what: `detaching ${dev}` });
