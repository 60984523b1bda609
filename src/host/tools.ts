import { execa } from "execa";
import { accessSync, constants } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import type { BuildLog } from "./log.js";

/** The Debian package that has each program, for "X is not installed" messages. */
export const DEBIAN_PACKAGE: Record<string, string> = {
  losetup: "mount",
  mount: "mount",
  umount: "mount",
  fstrim: "util-linux",
  chroot: "coreutils",
  cp: "coreutils",
  tar: "tar",
  e2fsck: "e2fsprogs",
  resize2fs: "e2fsprogs",
  dumpe2fs: "e2fsprogs",
  mcopy: "mtools",
  mdir: "mtools",
  mdel: "mtools",
  mmd: "mtools",
  mdeltree: "mtools",
  xz: "xz-utils",
  zstd: "zstd",
  zerofree: "zerofree",
};

const SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/** PATH with the sbin directories, which a user's PATH may lack even under sudo. */
export function toolPath(): string {
  const dirs = (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":").filter(Boolean);
  for (const d of SBIN) if (!dirs.includes(d)) dirs.push(d);
  return dirs.join(":");
}

export function findProgram(name: string): string | undefined {
  for (const dir of toolPath().split(":")) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

/** Every missing program, as one message with the apt-get line that installs them. */
export function requirePrograms(names: string[], why: string): void {
  const missing = names.filter((n) => !findProgram(n));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((m) => DEBIAN_PACKAGE[m] ?? m))];
  throw new PibakeError(`${why} needs ${missing.join(", ")}, which ${missing.length === 1 ? "is" : "are"} not installed: sudo apt-get install ${pkgs.join(" ")}`);
}

export interface ToolOptions {
  /** What this does, for the error message: "checking the root file system". */
  what: string;
  log?: BuildLog;
  signal?: AbortSignal;
  input?: string;
  env?: Record<string, string>;
  /** Exit codes that are success (e2fsck: 0, 1, 2). */
  okCodes?: number[];
  /** Send each output line here as it arrives (progress). */
  onLine?: (line: string) => void;
}

/**
 * Run a program; its output goes to the log. A failure is a PibakeError that
 * says what was being done, the command, its exit code and its last lines.
 */
export async function tool(cmd: string, args: string[], opts: ToolOptions): Promise<{ stdout: string; output: string; exitCode: number }> {
  opts.log?.command(cmd, args);
  const child = execa(cmd, args, {
    reject: false,
    all: true,
    env: { ...opts.env, PATH: toolPath() },
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: "ignore" as const }),
    ...(opts.signal ? { cancelSignal: opts.signal, forceKillAfterDelay: 3000 } : {}),
  });
  if (opts.onLine) {
    let partial = "";
    child.all?.setEncoding("utf8");
    child.all?.on("data", (chunk: string) => {
      const lines = (partial + chunk).split(/\r?\n|\r/);
      partial = lines.pop() ?? "";
      for (const l of lines) if (l) opts.onLine!(l);
    });
  }
  const r = await child;
  const all = String(r.all ?? "");
  if (all.trim()) opts.log?.line(all.trimEnd());
  if (r.isCanceled && opts.signal?.reason instanceof Error) throw opts.signal.reason;
  const code = r.exitCode;
  if (code === undefined) {
    const notFound = /ENOENT/.test(r.message ?? "") || (r as { code?: string }).code === "ENOENT";
    if (notFound) {
      throw new PibakeError(`${opts.what}: ${cmd} is not installed: sudo apt-get install ${DEBIAN_PACKAGE[cmd] ?? cmd}`);
    }
    throw new PibakeError(`${opts.what}: ${cmd} did not run (${r.signal ? `killed by ${r.signal}` : r.shortMessage})`);
  }
  if (!(opts.okCodes ?? [0]).includes(code)) {
    const tail = all.trimEnd().split("\n").slice(-20).map((l) => `  | ${l}`).join("\n");
    throw new PibakeError(`${opts.what}: \`${[cmd, ...args].join(" ")}\` failed (exit ${code})${tail ? `:\n${tail}` : ""}`);
  }
  return { stdout: String(r.stdout ?? ""), output: all, exitCode: code };
}
