import type { Command } from "../../host/process.js";

/**
 * The programs the pi-gen engine runs to get pi-gen and copy its tree, as
 * pure command builders: the arguments are decided here and tested as data
 * (test/commands.test.ts). git's answers are judged by the caller (any exit
 * code), so that its message names the checkout.
 */

/** git in `dir`; `what` is the git command itself, as the error message shows it. */
const gitIn = (dir: string, args: string[]): Command => ({ cmd: "git", args: ["-C", dir, ...args], what: `git ${args.join(" ")}`, okCodes: "any" });

export const currentBranch = (dir: string): Command => gitIn(dir, ["rev-parse", "--abbrev-ref", "HEAD"]);

export const headCommit = (dir: string): Command => gitIn(dir, ["rev-parse", "HEAD"]);

/** The branch's newest commit only (shallow), into `dest`. */
export const cloneBranch = (repo: string, branch: string, dest: string): Command => ({
  cmd: "git",
  args: ["clone", "--quiet", "--depth", "1", "--branch", branch, repo, dest],
  what: "cloning pi-gen",
  okCodes: "any",
});

/** The branch's newest commit (shallow), for `pibake build --update-pi-gen`; resetToFetched then moves the checkout to it. */
export const fetchBranch = (dir: string, branch: string): Command => gitIn(dir, ["fetch", "--quiet", "--depth", "1", "origin", branch]);

export const resetToFetched = (dir: string): Command => gitIn(dir, ["reset", "--quiet", "--hard", "FETCH_HEAD"]);

/** The tracked files at one commit, as a tar on standard output: pibake's copy never has the checkout's other files. */
export const archiveCommit = (dir: string, commit: string): Command => ({
  cmd: "git",
  args: ["-C", dir, "archive", "--format=tar", commit],
  what: `copying pi-gen's files at ${commit}`,
});

/** A tar from standard input, unpacked into `dir`. */
export const extractTar = (dir: string): Command => ({ cmd: "tar", args: ["-x", "-C", dir], what: `unpacking pi-gen's files into ${dir}` });

/** Whether bash finds a program pi-gen's depends file names; the name is an argument, never shell text. */
export const findTool = (tool: string): Command => ({
  cmd: "bash",
  args: ["-c", 'hash "$1" 2>/dev/null', "pibake-hash", tool],
  what: `looking for ${tool}`,
  okCodes: "any",
});

/** Docker's server version: any answer means a Docker engine listens (the docker runner's pre-flight). */
export const dockerVersion = (): Command => ({ cmd: "docker", args: ["info", "--format", "{{.ServerVersion}}"], what: "asking Docker", okCodes: "any" });

/** The ids of pibake's container by its exact name, running or not: one an interrupted build left. */
export const findContainer = (name: string): Command => ({
  cmd: "docker",
  args: ["ps", "-a", "--filter", `name=^${name}$`, "-q"],
  what: "looking for pi-gen's container",
  okCodes: "any",
});

/** Stops the container within 10 s (then docker kills it), after an interruption. */
export const stopContainer = (name: string): Command => ({
  cmd: "docker",
  args: ["stop", "-t", "10", name],
  what: "stopping pi-gen's container",
  okCodes: "any",
});

/** pi-gen itself, in its tree, with pibake's config: natively or in Docker. The caller judges the exit code, naming the step that failed. */
export const runPiGen = (runner: "native" | "docker", configFile: string): Command => ({
  cmd: runner === "native" ? "./build.sh" : "./build-docker.sh",
  args: ["-c", configFile],
  what: "pi-gen",
  okCodes: "any",
});
