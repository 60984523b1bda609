import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { withCleanup } from "../cleanup.js";
import { ImageRoot } from "../host/image-root.js";
import { runCommand } from "../host/process.js";
import { hostScript } from "./commands.js";
import { stagesDir } from "../paths.js";
import { packageList } from "../render/stage.js";
import { shellQuote } from "../host/shell.js";
import { PibakeError } from "../errors.js";
import { holdBuildTimeSettings, mountChrootFilesystems, preventServiceStarts, provideResolvConf, runInChroot } from "./chroot.js";

/**
 * pi-gen's stage contract, for engines that run a stage without pi-gen (the
 * base-image engine) and for tests: in each sub-stage directory, in order, for
 * NN from 00 to 99: NN-debconf, NN-packages-nr, NN-packages, NN-run.sh (on the
 * host, with ROOTFS_DIR), NN-run-chroot.sh (inside the image). Sub-stages with
 * a SKIP file are skipped, as pi-gen does. prerun.sh is pi-gen's own business
 * (copying the previous stage) and is not run here.
 */
export interface StageRunOptions {
  stageDir: string;
  rootfs: string;
  /** Extra environment for NN-run.sh (pi-gen's exported variables that a script may read). */
  env?: Record<string, string>;
  /** Skip the package steps: a regeneration of an image whose packages are already there. */
  skipPackages?: boolean;
  /** Run `apt-get update` before the first package step (images usually ship without package lists). */
  aptUpdate?: boolean;
  /** Progress: "Begin …"/"End …" as pi-gen logs them, and each output line. */
  onStep?: (event: "Begin" | "End", what: string) => void;
  onLine?: (line: string) => void;
  signal?: AbortSignal;
}

/** The steps of a sub-stage in pi-gen's order, as data (tested without running anything). */
export type StageStep =
  | { kind: "debconf"; file: string }
  | { kind: "packages"; file: string; noRecommends: boolean }
  | { kind: "run"; file: string }
  | { kind: "run-chroot"; file: string };

export function planSubStage(subStageDir: string): StageStep[] {
  const steps: StageStep[] = [];
  for (let n = 0; n <= 99; n++) {
    const i = String(n).padStart(2, "0");
    const f = (suffix: string) => path.join(subStageDir, `${i}-${suffix}`);
    if (existsSync(f("debconf"))) steps.push({ kind: "debconf", file: f("debconf") });
    if (existsSync(f("packages-nr"))) steps.push({ kind: "packages", file: f("packages-nr"), noRecommends: true });
    if (existsSync(f("packages"))) steps.push({ kind: "packages", file: f("packages"), noRecommends: false });
    if (existsSync(f("patches"))) throw new PibakeError(`${f("patches")}: quilt patches are not supported outside pi-gen`);
    if (existsSync(f("run.sh"))) {
      if (isExecutable(f("run.sh"))) steps.push({ kind: "run", file: f("run.sh") });
    }
    if (existsSync(f("run-chroot.sh"))) steps.push({ kind: "run-chroot", file: f("run-chroot.sh") });
  }
  return steps;
}

export function subStages(stageDir: string): string[] {
  return readdirSync(stageDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !existsSync(path.join(stageDir, e.name, "SKIP")))
    .map((e) => path.join(stageDir, e.name))
    .sort();
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

export async function runStage(opts: StageRunOptions): Promise<void> {
  const rootfs = path.resolve(opts.rootfs);
  const stageDir = path.resolve(opts.stageDir);
  const root = new ImageRoot(rootfs);
  if (!root.exists("/bin/bash")) {
    throw new PibakeError(`${rootfs} does not look like a root filesystem (no /bin/bash)`);
  }
  const begin = (what: string) => opts.onStep?.("Begin", what);
  const end = (what: string) => opts.onStep?.("End", what);
  await withCleanup(async (scope) => {
    const signal = anySignal(scope.signal, opts.signal);
    await mountChrootFilesystems(root, scope);
    preventServiceStarts(root, scope);
    provideResolvConf(root, scope);
    holdBuildTimeSettings(root, scope);
    let aptUpdated = !opts.aptUpdate;
    const env = extraCaEnv(root);
    const chroot = (script: string) => runInChroot(rootfs, { script, signal, env, ...(opts.onLine ? { onLine: opts.onLine } : {}) });
    begin(stageDir);
    for (const sub of subStages(stageDir)) {
      begin(sub);
      for (const step of planSubStage(sub)) {
        scope.throwIfInterrupted();
        if (step.kind === "packages" && opts.skipPackages) continue;
        begin(step.file);
        switch (step.kind) {
          case "debconf":
            await chroot(`debconf-set-selections <<'SELEOF'\n${readFileSync(step.file, "utf8")}\nSELEOF\n`);
            break;
          case "packages": {
            const pkgs = packageList(readFileSync(step.file, "utf8"));
            if (pkgs.length === 0) break;
            if (!aptUpdated) {
              await chroot(aptUpdateScript());
              aptUpdated = true;
            }
            await chroot(aptInstallScript(pkgs, step.noRecommends));
            break;
          }
          case "run":
            await runHostScript(step.file, sub, stageDir, rootfs, opts, signal);
            break;
          case "run-chroot":
            await chroot(readFileSync(step.file, "utf8"));
            break;
        }
        end(step.file);
      }
      end(sub);
    }
    end(stageDir);
  });
}

/**
 * pi-gen's scripts/common exports on_chroot to every NN-run.sh; a host script
 * gets the same here, so that what it does to the image it does inside the
 * chroot, where the image's links lead inside the image (the chroot's
 * mounts are already in place).
 */
const ON_CHROOT = path.join(stagesDir, "host/on-chroot.sh");

async function runHostScript(file: string, subStageDir: string, stageDir: string, rootfs: string, opts: StageRunOptions, signal: AbortSignal): Promise<void> {
  await runCommand(hostScript(file, ON_CHROOT), {
    cwd: subStageDir,
    env: { ...opts.env, ROOTFS_DIR: rootfs, STAGE_DIR: stageDir, SUB_STAGE_DIR: subStageDir },
    signal,
    onLine: opts.onLine,
    failure: (exit, tail) => `${file} failed (${exit}):\n${tail}`,
  });
}

/** The chroot's apt-get, as pi-gen runs it: retries for a flaky mirror. */
export function aptUpdateScript(): string {
  return "apt-get -o Acquire::Retries=3 update\n";
}

/** `NN-packages` (with recommends) and `NN-packages-nr` (without), each name quoted for the shell. */
export function aptInstallScript(packages: readonly string[], noRecommends: boolean): string {
  return `apt-get -o Acquire::Retries=3 install ${noRecommends ? "--no-install-recommends " : ""}-y ${packages.map(shellQuote).join(" ")}\n`;
}

/** An install answered "no": apt prints what it would download and install, and changes nothing. */
export function aptEstimateScript(packages: readonly string[], noRecommends: boolean): string {
  return `apt-get -o Acquire::Retries=3 install --assume-no ${noRecommends ? "--no-install-recommends " : ""}${packages.map(shellQuote).join(" ")} || true\n`;
}

/**
 * A build host behind a TLS-inspecting proxy names the proxy's CA in
 * NODE_EXTRA_CA_CERTS; npm inside the image (Node-RED installed at build time)
 * needs it too. It is copied to the chroot's /tmp, a tmpfs for the stage's
 * duration, so it never lands in the image.
 */
function extraCaEnv(root: ImageRoot): Record<string, string> {
  const file = process.env.NODE_EXTRA_CA_CERTS;
  if (!file || !existsSync(file)) return {};
  const inChroot = "/tmp/pibake-extra-ca.pem";
  root.write(inChroot, readFileSync(file));
  return { NODE_EXTRA_CA_CERTS: inChroot };
}

function anySignal(...signals: (AbortSignal | undefined)[]): AbortSignal {
  return AbortSignal.any(signals.filter((s): s is AbortSignal => !!s));
}
