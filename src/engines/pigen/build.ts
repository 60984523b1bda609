import { runCommand, type RunResult } from "../../host/process.js";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { InterruptedError, PibakeError } from "../../errors.js";
import { redact } from "../../host/redact.js";
import { formatDuration } from "../../ui/output.js";
import type { Model } from "../../config/model.js";
import type { EngineInput, EngineResult, StepReporter } from "../types.js";
import { BuildLog } from "../../host/log.js";
import { problemsError } from "../problems.js";
import { chooseRunner, userBaseStages as chosenBaseStages, type Runner } from "./engine.js";
import { findContainer, runPiGen, stopContainer } from "./commands.js";
import { cacheDir, cachedCheckout, placeStages, prepareTree, useCheckout, type PiGenCheckout } from "./checkout.js";
import { estimateRemaining, PiGenProgress } from "./log.js";
import { releaseBelow } from "../../host/release.js";
import { missingDependencies, PIGEN_HEADING } from "./preflight.js";
import { baseDigest, baseStageNames, decideReuse, piGenBranch, piGenConfigFile, PIBAKE_STAGE, stageList } from "./plan.js";

interface BaseRecord {
  digest: string;
  finishedAt: string;
}

/** A digest of the files of the user's base stages, so that editing one rebuilds from scratch. */
function digestTree(dirs: string[]): string {
  const h = createHash("sha256");
  const walk = (dir: string, rel: string) => {
    for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(rel, e.name);
      h.update(p + "\0");
      if (e.isDirectory()) walk(dir, p);
      else if (e.isFile()) h.update(readFileSync(path.join(dir, p))).update(String(statSync(path.join(dir, p)).mode & 0o111));
    }
  };
  for (const d of dirs) walk(path.resolve(d), "");
  return h.digest("hex");
}

/** The last full build's and the last regeneration's pi-gen times, kept in the state directory for estimates and the summary. */
interface PiGenRun {
  stages: Record<string, number>;
  totalMs: number;
  finishedAt: string;
}
export type PiGenTimings = Partial<Record<"full" | "regeneration", PiGenRun>>;
const TIMINGS_FILE = "pigen-timings.json";

function readTimings(state: EngineInput["state"]): PiGenTimings {
  const t = state.readJson<PiGenTimings>(TIMINGS_FILE) ?? {};
  // Only records of this shape count; anything else is an older pibake's and is ignored.
  const valid = (r: PiGenRun | undefined) => (r && typeof r.totalMs === "number" && r.stages ? r : undefined);
  const full = valid(t.full);
  const regeneration = valid(t.regeneration);
  return { ...(full ? { full } : {}), ...(regeneration ? { regeneration } : {}) };
}

/** "pi-gen: full build 41m10s (2026-11-20), regeneration 6m02s (this build)" */
export function timingsSummary(t: PiGenTimings, thisBuild: "full" | "regeneration"): string {
  const part = (k: "full" | "regeneration") => {
    const r = t[k];
    if (!r) return k === "full" ? "full build not recorded" : "regeneration not yet (the next build with unchanged base inputs)";
    return `${k === "full" ? "full build" : "regeneration"} ${formatDuration(r.totalMs)} (${k === thisBuild ? "this build" : r.finishedAt.slice(0, 10)})`;
  };
  return `pi-gen: ${part("full")}, ${part("regeneration")}`;
}

/** pi-gen unmounts and removes its loop devices when interrupted: it is given this long before SIGKILL. */
const PI_GEN_STOP_MS = 60_000;

/**
 * One build through pi-gen: where its tree, work and deploy directories are,
 * and what each step decides for the next. The steps run in order, each a
 * function of this record.
 */
interface PiGenBuild {
  readonly input: EngineInput;
  readonly model: Model;
  readonly reporter: StepReporter;
  readonly started: number;
  readonly branch: string;
  readonly checkout: PiGenCheckout;
  readonly runner: Runner;
  /** The user's base stages (--base-stages or the config's), and the names they run under. */
  readonly userBaseStages: string[];
  readonly baseStages: string[];
  readonly treeDir: string;
  readonly workDir: string;
  readonly deployDir: string;
  /** What the last finished base was built from, kept in the work directory. */
  readonly recordFile: string;
  readonly configPath: string;
  readonly containerName: string;
  /** The base stages' inputs now, and whether the kept base is reused (a regeneration). */
  digest?: string;
  reuse: boolean;
  /** The stages that run, in order, and the last runs' times for the estimate. */
  stages: string[];
  previous: PiGenTimings;
  readonly progress: PiGenProgress;
}

export async function buildWithPiGen(input: EngineInput, reporter: StepReporter): Promise<EngineResult> {
  const { model } = input.config;
  const started = Date.now();
  reporter.begin("pi-gen");
  const branch = piGenBranch(model.image.release, model.image.arch);
  const checkout = await checkoutPiGen(input, reporter, branch);
  const runner = await chooseRunner(input.request);
  await checkDependencies(runner, checkout);
  const p = planDirectories(input, reporter, { started, branch, checkout, runner });
  await prepareTree(checkout, p.treeDir);
  decideBaseReuse(p);
  writeTree(p);
  planStages(p);
  const env = await containerEnv(p);
  releaseOnStop(p);
  const result = await runAndFollow(p, env);
  checkOutcome(p, result);
  const imagePath = findImage(p);
  return recordRun(p, imagePath);
}

/** The user's pi-gen checkout (--pi-gen), or pibake's cached clone of the branch. */
async function checkoutPiGen(input: EngineInput, reporter: StepReporter, branch: string): Promise<PiGenCheckout> {
  const { request } = input;
  const checkout: PiGenCheckout = request.piGen
    ? await useCheckout(path.resolve(request.piGen), branch)
    : await cachedCheckout(branch, { update: request.updatePiGen ?? false, onStatus: (s) => reporter.status(s) });
  reporter.info(`pi-gen ${branch} at ${checkout.commit.slice(0, 12)} (${checkout.dir})`);
  return checkout;
}

/** The checkout says what it needs; the engine's preflight checked the rest. */
async function checkDependencies(runner: Runner, checkout: PiGenCheckout): Promise<void> {
  if (runner !== "native") return;
  const deps = await missingDependencies(path.join(checkout.dir, "depends"));
  if (deps) throw problemsError([deps], PIGEN_HEADING);
}

/** Where pi-gen's tree, work and deploy directories are for this image, and the record the steps fill in. */
function planDirectories(
  input: EngineInput,
  reporter: StepReporter,
  f: { started: number; branch: string; checkout: PiGenCheckout; runner: Runner },
): PiGenBuild {
  const { model } = input.config;
  const cache = cacheDir();
  const treeDir = path.join(cache, "pi-gen-tree", f.branch);
  // The work directory is keyed by the image name, which stays fixed across domains: that is what lets a new domain reuse stage0-2.
  const workDir = path.join(cache, "work", model.image.name);
  const userBaseStages = chosenBaseStages(input.request, model).map((s) => s.dir);
  return {
    input,
    model,
    reporter,
    ...f,
    userBaseStages,
    baseStages: baseStageNames(userBaseStages),
    treeDir,
    workDir,
    // Where the image appears: pibake's own deploy directory, or for Docker the tree's deploy/, where build-docker.sh copies it out of the container.
    deployDir: f.runner === "native" ? path.join(cache, "deploy", model.image.name) : path.join(treeDir, "deploy"),
    recordFile: path.join(workDir, "pibake-base.json"),
    configPath: path.join(treeDir, "pibake.config"),
    containerName: `pibake_${model.image.name.replace(/[^a-zA-Z0-9_.-]/g, "_")}`,
    reuse: false,
    stages: [],
    previous: {},
    progress: new PiGenProgress(),
  };
}

/** Reuse the kept base stages when their inputs are unchanged and their root file system is whole; else forget the record, for a full build. */
function decideBaseReuse(p: PiGenBuild): void {
  const { request } = p.input;
  const lastBase = p.baseStages.at(-1)!;
  const record = existsSync(p.recordFile) ? (JSON.parse(readFileSync(p.recordFile, "utf8")) as BaseRecord) : undefined;
  p.digest = baseDigest(p.input.rendered.system, p.checkout.commit, digestTree(p.userBaseStages), p.input.secrets.piGenFirstUserPlaceholder);
  const decision = decideReuse({
    clean: request.clean ?? false,
    currentDigest: p.digest,
    baseRootfsIntact: p.runner === "native" && existsSync(path.join(p.workDir, lastBase, "rootfs", "etc", "os-release")),
    ...(record ? { recordedDigest: record.digest } : {}),
  });
  p.reporter.info(decision.reuse ? `regenerating: ${decision.reason}` : `full build: ${decision.reason}`);
  if (!decision.reuse) rmSync(p.recordFile, { force: true });
  p.reuse = decision.reuse;
}

/** The stages and pi-gen's config into the tree; stage-pibake and the deploy directory emptied. */
function writeTree(p: PiGenBuild): void {
  placeStages(p.treeDir, { stageFiles: p.input.rendered.stage, baseStageDirs: p.userBaseStages, skipBase: p.reuse, baseStages: p.baseStages });
  // stage-pibake starts from a fresh copy of the base rootfs every time.
  rmSync(path.join(p.workDir, PIBAKE_STAGE), { recursive: true, force: true });
  rmSync(p.deployDir, { recursive: true, force: true });
  mkdirSync(p.deployDir, { recursive: true });
  writeFileSync(
    p.configPath,
    piGenConfigFile(p.input.rendered.piGenConfig, {
      stageList: stageList(p.userBaseStages),
      gitHash: p.checkout.commit,
      ...(p.runner === "native" ? { workDir: p.workDir, deployDir: p.deployDir } : {}),
    }),
    { mode: 0o600 },
  );
}

/** The stages this run goes through, the last such run's times for the estimate, and a line in the log. */
function planStages(p: PiGenBuild): void {
  p.previous = readTimings(p.input.state);
  p.stages = [...(p.reuse ? [] : p.baseStages), PIBAKE_STAGE, "export-image"];
  const log = new BuildLog(p.input.logPath);
  log.line(`pi-gen ${p.branch} ${p.checkout.commit} (${p.runner}), ${p.reuse ? "regeneration" : "full build"}`);
}

/** build-docker.sh's environment: the container's name, and whether to continue in one left by an interrupted build. */
async function containerEnv(p: PiGenBuild): Promise<Record<string, string>> {
  if (p.runner !== "docker") return {};
  const env: Record<string, string> = { CONTAINER_NAME: p.containerName, PRESERVE_CONTAINER: "0", CONTINUE: "0" };
  // A container left by an interrupted build would stop build-docker.sh with "already exists".
  const existing = await runCommand(findContainer(p.containerName));
  if (existing.stdout.trim()) env.CONTINUE = "1";
  return env;
}

/** On failure or Ctrl-C: pi-gen's container stopped, or what a native pi-gen left mounted released. */
function releaseOnStop(p: PiGenBuild): void {
  const { scope } = p.input;
  scope.defer(async () => {
    if (p.runner === "docker" && scope.signal.aborted) await runCommand(stopContainer(p.containerName));
  }, "stop pi-gen's container");
  if (p.runner === "native") {
    // pi-gen unmounts on its own exit trap; a pi-gen killed before that leaves chroot mounts and the export's loop device.
    scope.defer(async () => {
      const released = await releaseBelow(p.workDir);
      if (released.length > 0) p.reporter.info(`released what pi-gen left: ${released.join(", ")}`);
    }, "release pi-gen's mounts and loop devices");
  }
}

/** pi-gen's run, its lines to the log and its progress to the status line. */
async function runAndFollow(p: PiGenBuild, env: Record<string, string>): Promise<RunResult> {
  const { reporter, progress, stages } = p;
  const previousStages = p.previous[p.reuse ? "regeneration" : "full"]?.stages;
  let stageStarted = Date.now();
  let currentStage: string | undefined;
  // Plain output (a log, CI) gets a line when pi-gen moves on, and a heartbeat once a minute; a terminal's status line is refreshed every few seconds.
  let lastPlain = { where: "", at: 0 };
  const showStatus = () => {
    const where = progress.current() ?? "starting";
    if (!reporter.live && where === lastPlain.where && Date.now() - lastPlain.at < 60_000) return;
    lastPlain = { where, at: Date.now() };
    const remaining = estimateRemaining(previousStages, stages, progress.stageDurations, currentStage, Date.now() - stageStarted);
    reporter.status(
      `pi-gen: ${where} · ${formatDuration(Date.now() - p.started)} elapsed${remaining !== undefined ? ` · about ${formatDuration(remaining)} left` : ""}`,
    );
  };
  const ticker = setInterval(showStatus, 5000);
  // pi-gen runs in a process group of its own, and an interruption goes to the whole group, as Ctrl-C on a
  // terminal would: build.sh defers its clean-up trap until its foreground command (an apt-get in the chroot) exits.
  return runCommand(runPiGen(p.runner, p.configPath), {
    cwd: p.treeDir,
    env,
    signal: p.input.scope.signal,
    stop: { signal: "SIGINT", group: true, killAfterMs: PI_GEN_STOP_MS },
    onLine: (raw) => {
      const line = redact(raw);
      reporter.detail(line);
      const e = progress.feed(line);
      if (e?.kind === "begin" && e.stage && !e.subStage) {
        currentStage = e.stage;
        stageStarted = Date.now();
        // pi-gen logs Begin/End for stages marked SKIP too; only the ones that run are news.
        if (stages.includes(e.stage)) reporter.status(`pi-gen: ${e.stage} begins`);
      } else if (e) showStatus();
    },
  }).finally(() => clearInterval(ticker));
}

/** An interrupted or failed pi-gen stops the build, saying where and how to go on. */
function checkOutcome(p: PiGenBuild, result: RunResult): void {
  const { signal } = p.input.scope;
  if (signal.aborted) {
    const reason = signal.reason;
    throw new InterruptedError(
      reason instanceof InterruptedError ? reason.signal : "a signal",
      `pi-gen was stopped; its work directory is kept in ${p.workDir}: run the same command again to continue (stage0-2 are reused once they have finished)`,
    );
  }
  if (result.exitCode !== 0) {
    const failed = p.progress.failedStep();
    throw new PibakeError(
      `pi-gen failed${failed ? ` in ${failed}` : ""} (exit ${result.exitCode ?? result.signal}). Last lines of its log:\n${result.tail.map((l) => `  | ${redact(l)}`).join("\n")}`,
    );
  }
}

/** The one image pi-gen exported. */
function findImage(p: PiGenBuild): string {
  const images = existsSync(p.deployDir) ? readdirSync(p.deployDir).filter((f) => f.endsWith(".img")) : [];
  if (images.length !== 1) throw new PibakeError(`pi-gen finished but ${p.deployDir} holds ${images.length} images instead of one`);
  return path.join(p.deployDir, images[0]!);
}

/** The base record and this run's times kept for the next build; the engine's result. */
function recordRun(p: PiGenBuild, imagePath: string): EngineResult {
  const kind = p.reuse ? "regeneration" : "full";
  const bmap = imagePath.replace(/\.img$/, ".bmap");
  // Docker keeps pi-gen's work directory in its container, so there is nothing on this host to reuse next time.
  if (p.runner === "native")
    writeFileSync(p.recordFile, JSON.stringify({ digest: p.digest!, finishedAt: new Date().toISOString() } satisfies BaseRecord, null, 2));
  const timings = { ...p.progress.stageDurations, total: Date.now() - p.started };
  const recorded: PiGenTimings = { ...p.previous, [kind]: { stages: p.progress.stageDurations, totalMs: timings.total, finishedAt: new Date().toISOString() } };
  p.input.state.writeJson(TIMINGS_FILE, recorded);
  return {
    imagePath,
    ...(existsSync(bmap) ? { bmapPath: bmap } : {}),
    manifest: { engine: "pi-gen", piGenBranch: p.branch, piGenCommit: p.checkout.commit, runner: p.runner, regeneration: p.reuse },
    timings,
    summary: [timingsSummary(recorded, kind)],
  };
}
