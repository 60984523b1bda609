import { existsSync, promises as fsp } from "node:fs";
import path from "node:path";
import { pidAlive } from "../host/process.js";

/** A temporary name in --out: hidden, with our pid, so that a later run can tell a leftover from a live build. */
export function tempName(dir: string, finalName: string): string {
  return path.join(dir, `.pibake-tmp-${process.pid}-${finalName}`);
}

/** Leftovers of builds that were killed before they could clean up (SIGKILL): `.pibake-tmp-<pid>-*` whose pid is gone. */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const removed: string[] = [];
  for (const name of await fsp.readdir(dir)) {
    const m = /^\.pibake-tmp-(\d+)-/.exec(name) ?? /^\.\.pibake-tmp-(\d+)-.*\.(\d+)\.tmp$/.exec(name);
    if (!m) continue;
    if (pidAlive(Number(m[1]))) continue;
    await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}
