import { readdirSync, readlinkSync } from "node:fs";
import path from "node:path";
import type { BuildLog } from "./log.js";
import { detachLoop, listLoops } from "./loop.js";
import { mountsBelow, unmountTree } from "./mounts.js";

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
