import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import type { CleanupScope } from "../cleanup.js";
import { attachLoopDevice, detachLoopDevice } from "./commands.js";
import { runCommand } from "./process.js";
import type { BuildLog } from "./log.js";

/**
 * Loop devices by offset: one per partition, `losetup --offset --sizelimit`.
 * Nothing here relies on the kernel scanning a partition table on a loop
 * device (containers and some kernels do not), which is what breaks pi-gen's
 * loop handling there (pi-gen #257).
 */
export interface LoopOptions {
  readOnly?: boolean;
  log?: BuildLog;
}

export async function attachLoop(file: string, offset: number, size: number, scope: CleanupScope, opts: LoopOptions = {}): Promise<string> {
  // Not cancellable: the device must be known to be registered for detaching, whatever happens.
  const { stdout } = await runCommand(attachLoopDevice(file, offset, size, opts.readOnly === true, path.basename(file)), opts.log ? { log: opts.log } : {});
  const dev = stdout.trim();
  scope.defer(() => detachLoop(dev, opts.log), `detach ${dev}`);
  return dev;
}

/** Detach, retrying while udev or blkid still hold the device for a moment. */
export async function detachLoop(dev: string, log?: BuildLog): Promise<void> {
  let last = "";
  for (let i = 0; i < 10; i++) {
    try {
      await runCommand(detachLoopDevice(dev), log ? { log } : {});
      return;
    } catch (err) {
      last = (err as Error).message;
      if (!existsSync(`/sys/block/${path.basename(dev)}/loop`)) return;
      await new Promise((r) => setTimeout(r, 200 * (i + 1)));
    }
  }
  throw new Error(last);
}

/** Loop devices and their backing files, from sysfs (" (deleted)" removed). */
export function listLoops(): { dev: string; backingFile: string }[] {
  const out: { dev: string; backingFile: string }[] = [];
  let names: string[];
  try {
    names = readdirSync("/sys/block").filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const back = readFileSync(`/sys/block/${n}/loop/backing_file`, "utf8")
        .trim()
        .replace(/ \(deleted\)$/, "");
      out.push({ dev: `/dev/${n}`, backingFile: back });
    } catch {
      // Not attached.
    }
  }
  return out;
}
