import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PibakeError } from "../../errors.js";
import { PI_GEN_REPO } from "./plan.js";
import { runCommand, startPiped, type Command } from "../../host/process.js";
import { archiveCommit, cloneBranch, currentBranch, extractTar, fetchBranch, headCommit, resetToFetched } from "./commands.js";

/**
 * pibake's cache for pi-gen: `$XDG_CACHE_HOME/pibake`, else `~/.cache/pibake`.
 * Under sudo, HOME is normally root's; SUDO_USER's is not used (unlike the image cache):
 * pi-gen's work trees are root file systems that only root can prune.
 */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "pibake");
}

/** git's answer in `dir`, or what it said when it failed. */
async function git(dir: string, c: Command): Promise<string> {
  const r = await runCommand(c);
  if (r.exitCode !== 0) throw new PibakeError(`${c.what} in ${dir} failed: ${r.output.trim()}`);
  return r.stdout.trim();
}

export interface PiGenCheckout {
  dir: string;
  branch: string;
  commit: string;
}

/** A checkout the user names must be on the branch this config needs. */
export async function useCheckout(dir: string, branch: string): Promise<PiGenCheckout> {
  const abs = path.resolve(dir);
  if (!existsSync(path.join(abs, "build.sh"))) throw new PibakeError(`${abs} is not a pi-gen checkout (no build.sh)`);
  const current = await git(abs, currentBranch(abs)).catch(() => "");
  if (current !== branch) {
    throw new PibakeError(
      `${abs} is on branch ${current || "(unknown)"}, but this config needs pi-gen's ${branch} branch: run git -C ${abs} checkout ${branch}, or drop --pi-gen to let pibake fetch it`,
    );
  }
  return { dir: abs, branch, commit: await git(abs, headCommit(abs)) };
}

/** Clone the official repository (shallow) into the cache once; `update` fetches the branch's newest commit. */
export async function cachedCheckout(branch: string, opts: { update: boolean; onStatus: (s: string) => void }): Promise<PiGenCheckout> {
  const dir = path.join(cacheDir(), "pi-gen", branch);
  if (!existsSync(path.join(dir, ".git"))) {
    mkdirSync(path.dirname(dir), { recursive: true });
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    opts.onStatus(`cloning pi-gen (${branch}) into ${dir}`);
    const r = await runCommand(cloneBranch(PI_GEN_REPO, branch, tmp));
    if (r.exitCode !== 0) {
      rmSync(tmp, { recursive: true, force: true });
      throw new PibakeError(`cannot clone ${PI_GEN_REPO} (${branch}): ${r.output.trim()}\nWithout Internet access, clone it elsewhere and pass --pi-gen DIR`);
    }
    renameSync(tmp, dir);
  } else if (opts.update) {
    opts.onStatus(`updating pi-gen (${branch})`);
    await git(dir, fetchBranch(dir, branch));
    await git(dir, resetToFetched(dir));
  }
  return { dir, branch, commit: await git(dir, headCommit(dir)) };
}

/**
 * pibake's own copy of pi-gen's tracked files at one commit, so that the
 * user's checkout is never edited: the rendered stage goes in as
 * stage-pibake, base stages as stage-baseN, and SKIP/SKIP_IMAGES files are
 * set here. The copy is remade when the commit changes.
 */
export async function prepareTree(checkout: PiGenCheckout, treeDir: string): Promise<void> {
  const marker = path.join(treeDir, ".pibake-commit");
  const have = existsSync(marker) ? readFileSync(marker, "utf8").trim() : "";
  if (have !== checkout.commit) {
    rmSync(treeDir, { recursive: true, force: true });
    mkdirSync(treeDir, { recursive: true });
    await copyTracked(checkout, treeDir);
    writeFileSync(marker, checkout.commit + "\n");
  }
}

/** git archive piped into tar: the tracked files at the checkout's commit. */
async function copyTracked(checkout: PiGenCheckout, treeDir: string): Promise<void> {
  const steps = [archiveCommit(checkout.dir, checkout.commit), extractTar(treeDir)];
  const archive = startPiped(steps[0]!, { stdin: "ignore" });
  const extract = startPiped(steps[1]!, { stdin: "pipe" });
  archive.stdout.pipe(extract.stdin);
  const ends = await Promise.all([archive.done, extract.done]);
  const failed = steps.flatMap((c, i) => {
    const r = ends[i]!;
    if (r.exitCode === 0) return [];
    const how = r.exitCode === undefined ? r.message : `exit ${r.exitCode}`;
    return [`${c.what}: \`${[c.cmd, ...c.args].join(" ")}\` failed (${how})${r.stderr.trim() ? `: ${r.stderr.trim()}` : ""}`];
  });
  if (failed.length) throw new PibakeError(failed.join("\n"));
}

/** Reset the parts of the tree pibake controls, then place this build's stages and markers. */
export function placeStages(
  treeDir: string,
  o: { stageFiles: { path: string; content: Buffer; mode: number }[]; baseStageDirs: string[]; skipBase: boolean; baseStages: string[] },
): void {
  for (const e of readdirSync(treeDir)) {
    if (e === "stage-pibake" || e.startsWith("stage-base")) rmSync(path.join(treeDir, e), { recursive: true, force: true });
  }
  o.baseStageDirs.forEach((src, i) => cpSync(src, path.join(treeDir, `stage-base${i}`), { recursive: true }));
  for (const f of o.stageFiles) {
    const target = path.join(treeDir, "stage-pibake", f.path);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, f.content, { mode: f.mode });
  }
  for (const s of o.baseStages) {
    const dir = path.join(treeDir, s);
    if (!existsSync(dir)) throw new PibakeError(`base stage ${s} is missing from the pi-gen tree ${treeDir}`);
    // The base stages are never exported: only stage-pibake's image is wanted.
    writeFileSync(path.join(dir, "SKIP_IMAGES"), "");
    rmSync(path.join(dir, "SKIP"), { force: true });
    if (o.skipBase) writeFileSync(path.join(dir, "SKIP"), "");
  }
}
