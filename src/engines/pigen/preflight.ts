import { existsSync, readFileSync, statfsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { formatBytes } from "../../ui/output.js";
import { aptInstallLine, parseDepends } from "./plan.js";
import type { Problem } from "../types.js";
import { runCommand } from "../../host/process.js";
import { dockerVersion, findTool } from "./commands.js";

/**
 * What pi-gen will need, checked before a build of up to an hour starts,
 * each failure with the command that fixes it.
 */
type PreflightProblem = Problem;
export const PIGEN_HEADING = "pi-gen cannot build here yet";

/** pi-gen needs several GiB for its work directory (three root filesystems and the image). */
export const PI_GEN_MIN_FREE_BYTES = 12 * 1024 ** 3;

export function diskProblem(dir: string, needed = PI_GEN_MIN_FREE_BYTES): PreflightProblem | undefined {
  const free = freeBytes(dir);
  if (free >= needed) return undefined;
  return {
    what: `${dir} has ${formatBytes(free)} free; a pi-gen build needs about ${formatBytes(needed)}`,
    fix: "free some space, or set XDG_CACHE_HOME to a disk with more room",
  };
}

/** Free space where dir is or will be: measured at its nearest existing parent, so that asking creates nothing (build --dry-run). */
export function freeBytes(dir: string): number {
  let at = path.resolve(dir);
  while (!existsSync(at) && path.dirname(at) !== at) at = path.dirname(at);
  const st = statfsSync(at);
  return st.bavail * st.bsize;
}

export async function missingDependencies(dependsFile: string): Promise<PreflightProblem | undefined> {
  if (!existsSync(dependsFile)) return undefined;
  const missing: string[] = [];
  for (const dep of parseDepends(readFileSync(dependsFile, "utf8"))) {
    const r = await runCommand(findTool(dep.tool));
    if (r.exitCode !== 0) missing.push(dep.pkg);
  }
  if (missing.length === 0) return undefined;
  return { what: `pi-gen's dependencies are not all installed (missing: ${missing.join(", ")})`, fix: aptInstallLine(missing) };
}

export function rootProblem(uid = process.getuid?.() ?? 0): PreflightProblem | undefined {
  return uid === 0
    ? undefined
    : {
        what: "pi-gen's native build must run as root (it mounts file systems and uses loop devices)",
        fix: "run pibake with sudo -E (-E keeps the environment variables the config's secrets come from), or use --runner docker",
      };
}

export async function dockerAnswers(): Promise<boolean> {
  const r = await runCommand(dockerVersion(), { timeout: 15_000 });
  return r.exitCode === 0 && r.stdout.trim() !== "";
}

export function isDebianFamily(osRelease = existsSync("/etc/os-release") ? readFileSync("/etc/os-release", "utf8") : ""): boolean {
  return /^(ID|ID_LIKE)=.*\b(debian|ubuntu|raspbian)\b/m.test(osRelease) && os.platform() === "linux";
}
