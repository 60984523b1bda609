import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import type { CleanupScope } from "../../cleanup.js";
import { mountsBelow, unmountTree } from "../chroot.js";

export { mountsBelow } from "../chroot.js";
import { tool } from "../../host/tools.js";
import type { BuildLog } from "../../host/log.js";

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
  const { stdout } = await tool(
    "losetup",
    ["--find", "--show", "--offset", String(offset), "--sizelimit", String(size), ...(opts.readOnly ? ["--read-only"] : []), file],
    { what: `attaching ${path.basename(file)} (bytes ${offset}+${size}) to a loop device`, ...(opts.log ? { log: opts.log } : {}) },
  );
  const dev = stdout.trim();
  scope.defer(() => detachLoop(dev, opts.log), `detach ${dev}`);
  return dev;
}

/** Detach, retrying while udev or blkid still hold the device for a moment. */
export async function detachLoop(dev: string, log?: BuildLog): Promise<void> {
  let last = "";
  for (let i = 0; i < 10; i++) {
    try {
      await tool("losetup", ["--detach", dev], { what: `detaching ${dev}`, ...(log ? { log } : {}) });
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
      const back = readFileSync(`/sys/block/${n}/loop/backing_file`, "utf8").trim().replace(/ \(deleted\)$/, "");
      out.push({ dev: `/dev/${n}`, backingFile: back });
    } catch {
      // Not attached.
    }
  }
  return out;
}

/** Processes whose root directory is `rootfs` or below it: what still runs in a chroot. */
export function processesRootedIn(rootfs: string): number[] {
  const d = path.resolve(rootfs);
  const pids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const root = readlinkSync(`/proc/${e}/root`);
      if (root === d || root.startsWith(`${d}/`)) pids.push(Number(e));
    } catch {
      // Gone, or not ours to see.
    }
  }
  return pids;
}

/**
 * Stop whatever still runs inside the chroot (an apt-get whose parent shell was
 * killed on Ctrl-C keeps the file system busy): SIGTERM, then SIGKILL.
 */
export async function killChrootProcesses(rootfs: string, log?: BuildLog): Promise<void> {
  let pids = processesRootedIn(rootfs);
  if (pids.length === 0) return;
  log?.line(`stopping ${pids.length} process(es) still running in ${rootfs}: ${pids.join(" ")}`);
  for (const sig of ["SIGTERM", "SIGKILL"] as const) {
    for (const p of pids) {
      try {
        process.kill(p, sig);
      } catch {
        // Already gone.
      }
    }
    for (let i = 0; i < 30 && pids.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pids = processesRootedIn(rootfs);
    }
    if (pids.length === 0) return;
  }
}

/**
 * Release everything held below `dir` (processes in chroots there, mounts,
 * loop devices on files there): clean-up after a run that could not clean up
 * itself (SIGKILL, power loss).
 */
export async function releaseBelow(dir: string, log?: BuildLog): Promise<string[]> {
  const d = path.resolve(dir);
  const done: string[] = [];
  const mounts = mountsBelow(d);
  for (const m of mounts) await killChrootProcesses(m, log);
  if (mounts.length > 0) {
    await unmountTree(d);
    done.push(...mounts.map((m) => `unmounted ${m}`));
  }
  for (const l of listLoops()) {
    if (l.backingFile === d || l.backingFile.startsWith(`${d}/`)) {
      await detachLoop(l.dev, log).catch(() => undefined);
      done.push(`detached ${l.dev}`);
    }
  }
  return done;
}
