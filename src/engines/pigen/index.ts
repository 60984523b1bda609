import { runCommand } from "../../host/process.js";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { InterruptedError, PibakeError } from "../../errors.js";
import { redact } from "../../host/redact.js";
import { formatDuration } from "../../ui/output.js";
import type { EngineInput, EngineResult, StepReporter } from "../types.js";
import { BuildLog } from "../../host/log.js";
import { problemsError } from "../problems.js";
import { chooseRunner, userBaseStages as chosenBaseStages } from "./engine.js";
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

export async function buildWithPiGen(input: EngineInput, reporter: StepReporter): Promise<EngineResult> {
  const { model } = input.config;
  const { request } = input;
  const started = Date.now();
  reporter.begin("pi-gen");
  const branch = piGenBranch(model.image.release, model.image.arch);
  const userBaseStages = chosenBaseStages(request, model).map((s) => s.dir);

  const checkout: PiGenCheckout = request.piGen
    ? await useCheckout(path.resolve(request.piGen), branch)
    : await cachedCheckout(branch, { update: request.updatePiGen ?? false, onStatus: (s) => reporter.status(s) });
  reporter.info(`pi-gen ${branch} at ${checkout.commit.slice(0, 12)} (${checkout.dir})`);

  const runner = await chooseRunner(request);
  const cache = cacheDir();
  // The checkout says what it needs; the engine's preflight checked the rest.
  if (runner === "native") {
    const deps = await missingDependencies(path.join(checkout.dir, "depends"));
    if (deps) throw problemsError([deps], PIGEN_HEADING);
  }

  const treeDir = path.join(cache, "pi-gen-tree", branch);
  // The work directory is keyed by the image name, which stays fixed across domains: that is what lets a new domain reuse stage0-2.
  const workDir = path.join(cache, "work", model.image.name);
  // Where the image appears: pibake's own deploy directory, or for Docker the tree's deploy/, where build-docker.sh copies it out of the container.
  const deployDir = runner === "native" ? path.join(cache, "deploy", model.image.name) : path.join(treeDir, "deploy");
  await prepareTree(checkout, treeDir);

  const baseStages = baseStageNames(userBaseStages);
  const lastBase = baseStages.at(-1)!;
  const recordFile = path.join(workDir, "pibake-base.json");
  const record = existsSync(recordFile) ? (JSON.parse(readFileSync(recordFile, "utf8")) as BaseRecord) : undefined;
  const digest = baseDigest(input.rendered.system, checkout.commit, digestTree(userBaseStages), input.secrets.piGenFirstUserPlaceholder);
  const decision = decideReuse({
    clean: request.clean ?? false,
    currentDigest: digest,
    baseRootfsIntact: runner === "native" && existsSync(path.join(workDir, lastBase, "rootfs", "etc", "os-release")),
    ...(record ? { recordedDigest: record.digest } : {}),
  });
  reporter.info(decision.reuse ? `regenerating: ${decision.reason}` : `full build: ${decision.reason}`);
  if (!decision.reuse) rmSync(recordFile, { force: true });

  placeStages(treeDir, { stageFiles: input.rendered.stage, baseStageDirs: userBaseStages, skipBase: decision.reuse, baseStages });
  // stage-pibake starts from a fresh copy of the base rootfs every time.
  rmSync(path.join(workDir, PIBAKE_STAGE), { recursive: true, force: true });
  rmSync(deployDir, { recursive: true, force: true });
  mkdirSync(deployDir, { recursive: true });

  const configPath = path.join(treeDir, "pibake.config");
  writeFileSync(
    configPath,
    piGenConfigFile(input.rendered.piGenConfig, {
      stageList: stageList(userBaseStages),
      gitHash: checkout.commit,
      ...(runner === "native" ? { workDir, deployDir } : {}),
    }),
    { mode: 0o600 },
  );

  const kind = decision.reuse ? "regeneration" : "full";
  const previous = readTimings(input.state);
  const previousStages = previous[kind]?.stages;
  const stages = [...(decision.reuse ? [] : baseStages), PIBAKE_STAGE, "export-image"];
  const progress = new PiGenProgress();
  const log = new BuildLog(input.logPath);
  log.line(`pi-gen ${branch} ${checkout.commit} (${runner}), ${decision.reuse ? "regeneration" : "full build"}`);

  const containerName = `pibake_${model.image.name.replace(/[^a-zA-Z0-9_.-]/g, "_")}`;
  const env: Record<string, string> = runner === "docker" ? { CONTAINER_NAME: containerName, PRESERVE_CONTAINER: "0", CONTINUE: "0" } : {};
  if (runner === "docker") {
    // A container left by an interrupted build would stop build-docker.sh with "already exists".
    const existing = await runCommand(findContainer(containerName));
    if (existing.stdout.trim()) env.CONTINUE = "1";
  }

  // pi-gen runs in a process group of its own, and an interruption goes to the whole group, as Ctrl-C on a
  // terminal would: build.sh defers its clean-up trap until its foreground command (an apt-get in the chroot) exits.
  input.scope.defer(async () => {
    if (runner === "docker" && input.scope.signal.aborted) await runCommand(stopContainer(containerName));
  }, "stop pi-gen's container");
  if (runner === "native") {
    // pi-gen unmounts on its own exit trap; a pi-gen killed before that leaves chroot mounts and the export's loop device.
    input.scope.defer(async () => {
      const released = await releaseBelow(workDir);
      if (released.length > 0) reporter.info(`released what pi-gen left: ${released.join(", ")}`);
    }, "release pi-gen's mounts and loop devices");
  }
  let stageStarted = Date.now();
  let currentStage: string | undefined;
  // Plain output (a log, CI) gets a line when pi-gen moves on, and a heartbeat once a minute; a terminal's status line is refreshed every few seconds.
  let lastPlain = { where: "", at: 0 };
  const showStatus = () => {
    const where = progress.current() ?? "starting";
    if (!reporter.live && where === lastPlain.where && Date.now() - lastPlain.at < 60_000) return;
    lastPlain = { where, at: Date.now() };
    const remaining = estimateRemaining(previousStages, stages, progress.stageDurations, currentStage, Date.now() - stageStarted);
    reporter.status(`pi-gen: ${where} · ${formatDuration(Date.now() - started)} elapsed${remaining !== undefined ? ` · about ${formatDuration(remaining)} left` : ""}`);
  };
  const ticker = setInterval(showStatus, 5000);
  // pi-gen runs in a process group of its own, and an interruption goes to the whole group, as Ctrl-C on a
  // terminal would: build.sh defers its clean-up trap until its foreground command (an apt-get in the chroot) exits.
  const result = await runCommand(runPiGen(runner, configPath), {
    cwd: treeDir,
    env,
    signal: input.scope.signal,
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

  if (input.scope.signal.aborted) {
    const reason = input.scope.signal.reason;
    throw new InterruptedError(
      reason instanceof InterruptedError ? reason.signal : "a signal",
      `pi-gen was stopped; its work directory is kept in ${workDir}: run the same command again to continue (stage0-2 are reused once they have finished)`,
    );
  }
  if (result.exitCode !== 0) {
    const failed = progress.failedStep();
    throw new PibakeError(
      `pi-gen failed${failed ? ` in ${failed}` : ""} (exit ${result.exitCode ?? result.signal}). Last lines of its log:\n${result.tail.map((l) => `  | ${redact(l)}`).join("\n")}`,
    );
  }

  const images = existsSync(deployDir) ? readdirSync(deployDir).filter((f) => f.endsWith(".img")) : [];
  if (images.length !== 1) throw new PibakeError(`pi-gen finished but ${deployDir} holds ${images.length} images instead of one`);
  const imagePath = path.join(deployDir, images[0]!);
  const bmap = imagePath.replace(/\.img$/, ".bmap");

  // Docker keeps pi-gen's work directory in its container, so there is nothing on this host to reuse next time.
  if (runner === "native") writeFileSync(recordFile, JSON.stringify({ digest, finishedAt: new Date().toISOString() } satisfies BaseRecord, null, 2));
  const timings = { ...progress.stageDurations, total: Date.now() - started };
  const recorded: PiGenTimings = { ...previous, [kind]: { stages: progress.stageDurations, totalMs: timings.total, finishedAt: new Date().toISOString() } };
  input.state.writeJson(TIMINGS_FILE, recorded);

  return {
    imagePath,
    ...(existsSync(bmap) ? { bmapPath: bmap } : {}),
    manifest: { engine: "pi-gen", piGenBranch: branch, piGenCommit: checkout.commit, runner, regeneration: decision.reuse },
    timings,
    summary: [timingsSummary(recorded, kind)],
  };
}
