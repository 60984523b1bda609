import { readFileSync } from "node:fs";
import path from "node:path";
import { unmount, unmountLazily } from "./commands.js";
import { runCommand } from "./process.js";

/** Mount points at or below `dir`, from /proc/self/mounts. */
export function mountsBelow(dir: string): string[] {
  const d = path.resolve(dir);
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[1]?.replace(/\\040/g, " "))
    .filter((m): m is string => !!m && (m === d || m.startsWith(`${d}/`)));
}

/** Unmount a mount point and anything below it, deepest first; lazily as a last resort so that clean-up never hangs. */
export async function unmountTree(target: string): Promise<void> {
  const mounts = mountsBelow(target).sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    const r = await runCommand(unmount(m));
    if (r.exitCode !== 0) await runCommand(unmountLazily(m));
  }
}
