/**
 * `pibake build --dry-run`: what a build would do and need, found without
 * doing any of it. No root, no state directory, no download, no mount, no
 * render, nothing in --out. The checks are the build's own (src/build.ts's
 * buildRequirements); here every one is listed, met or not.
 */
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { loadConfig } from "./config/load.js";
import { PibakeError } from "./errors.js";
import { stateDirOf } from "./pipeline.js";
import { protectedPaths, refuseProtectedOutput } from "./protected-paths.js";
import { buildRequirements, cannotRunHeading, CA_FILE, checkUsage, deliveryBaseName, parseCompression, type BuildSettings } from "./build.js";
import { officialBase } from "./engines/base-image/engine.js";
import { formatProblems, problemsOf } from "./engines/problems.js";
import type { Problem, Requirement } from "./engines/types.js";
import type { Model } from "./config/model.js";
import { aptGetInstall } from "./host/tools.js";
import { detectCompression } from "./image/compression.js";
import { deliveredNames } from "./image/deliver.js";
import { planOfficialImage, type OfficialImagePlan } from "./official/index.js";
import { buildSteps } from "./ui/steps.js";
import { redact } from "./host/redact.js";
import { createOutput, formatBytes } from "./ui/output.js";

/** A requirement as the plan shows it: met, missing (the build cannot run), or a note (root: the build is run with sudo -E). */
export interface PlannedRequirement {
  need: string;
  state: "ok" | "missing" | "note";
  /** How it is met, or what is wrong. */
  detail: string;
  fix?: string;
  package?: string;
}

export type PlannedBase =
  | { kind: "official"; image: OfficialImagePlan; date?: string }
  | { kind: "file"; file: string; size?: number; compression?: string; problem?: string }
  | { kind: "pi-gen" };

export interface BuildPlan {
  config: { file: string; name: string; domain: string; release: string; arch: string; warnings: string[] };
  engine: { id: string; description: string };
  base: PlannedBase;
  steps: string[];
  out: { dir: string; exists: boolean; files: string[] };
  requirements: PlannedRequirement[];
  /** The apt-get line for every missing program, when one is missing. */
  install?: string;
  /** What stops the build, as the build would say it. */
  problems: Problem[];
  canRun: boolean;
}

/**
 * A requirement's state for the plan. Not being root is a note, not a reason
 * the plan cannot run: the user asks as themselves, and runs the build itself
 * with sudo -E, as every message about root says.
 */
export function planRequirement(r: Requirement): PlannedRequirement {
  const pkg = r.program ? { package: r.program.package } : {};
  if (r.met !== undefined) return { need: r.need, state: "ok", detail: r.program ? `${r.met} (Debian package ${r.program.package})` : r.met, ...pkg };
  if (r.program)
    return { need: r.need, state: "missing", detail: `not installed (Debian package ${r.program.package})`, fix: aptGetInstall([r.program.name]), ...pkg };
  const what = r.problem?.what ?? `${r.need} is missing`;
  return { need: r.need, state: r.root ? "note" : "missing", detail: what, ...(r.problem?.fix ? { fix: r.problem.fix } : {}) };
}

export async function planBuild(configPath: string, settings: BuildSettings, env: NodeJS.ProcessEnv = process.env): Promise<BuildPlan> {
  const engine = checkUsage(settings);
  const { request } = settings;
  const compress = parseCompression(settings.compress);
  // Validated as validate does it: the same errors, exit 2.
  const loaded = loadConfig(configPath, env);
  const { model } = loaded;
  const outDir = path.resolve(settings.out ?? "deploy");
  const state = stateDirOf(model, settings.state);
  refuseProtectedOutput(outDir, "--out", protectedPaths(model, state.dir, engine.inputs(request)));

  const requirements = await buildRequirements(engine, request, model, compress);
  const planned = requirements.map(planRequirement);
  const missingPrograms = requirements.filter((r) => r.program && r.met === undefined).map((r) => r.program!.name);
  const base = await planBase(engine.id, settings, model, env);
  const stopping = problemsOf(requirements.filter((r) => planRequirement(r).state !== "note"));
  if (base.kind === "official") stopping.push(...officialImageProblems(base.image, model));

  const names = deliveredNames(deliveryBaseName(model, new Date()), compress);
  return {
    config: {
      file: path.resolve(configPath),
      name: model.image.name,
      domain: model.tls.domain,
      release: model.image.release,
      arch: model.image.arch,
      warnings: loaded.warnings,
    },
    engine: { id: engine.id, description: engine.describe(request) },
    base,
    steps: buildSteps(engine.steps(request)).map((s) => s.title),
    out: { dir: outDir, exists: existsSync(outDir), files: [names.image, names.sha256, names.bmap, names.manifest, names.log, CA_FILE] },
    requirements: planned,
    ...(missingPrograms.length > 0 ? { install: aptGetInstall(missingPrograms) } : {}),
    problems: stopping,
    canRun: stopping.length === 0,
  };
}

/** The official image cannot be had: the list has none for the config, or it cannot be read and none is cached (the build would stop at its download step). */
function officialImageProblems(image: OfficialImagePlan, model: Model): Problem[] {
  if (image.unavailable) return [{ what: image.unavailable }];
  if (image.entry || image.cached) return [];
  return [
    {
      what: `cannot read the OS list ${image.listUrl} (${image.listProblem}), and no Raspberry Pi OS Lite image for ${model.image.release}/${model.image.arch} is in the cache (${image.cacheDir})`,
      fix: `run again when the list can be reached${image.listProblem === "PIBAKE_OFFLINE=1" ? " (without PIBAKE_OFFLINE=1)" : ""}, or give an image with --base FILE`,
    },
  ];
}

async function planBase(engineId: string, settings: BuildSettings, model: Model, env: NodeJS.ProcessEnv): Promise<PlannedBase> {
  const { request } = settings;
  if (engineId !== "base") return { kind: "pi-gen" };
  const official = officialBase(request);
  if (!official) {
    const file = path.resolve(request.base!);
    try {
      const size = statSync(file).size;
      return { kind: "file", file, size, compression: await detectCompression(file) };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return { kind: "file", file, problem: code === "ENOENT" ? "no such file" : (err as Error).message };
    }
  }
  // As the build takes it: the option's date wins over the config's.
  const date = official.date ?? model.image.raspiosDate;
  const image = await planOfficialImage({ release: model.image.release, arch: model.image.arch, date, listUrl: request.osList, env });
  return { kind: "official", image, ...(date ? { date } : {}) };
}

/** The plan as lines for a person; pure. */
export function formatPlan(plan: BuildPlan, runCommand: string): string[] {
  const lines: string[] = [];
  const row = (label: string, text: string) => lines.push(`${label.padEnd(12)}${text}`);
  lines.push(`dry run: nothing is built, downloaded, mounted or written`);
  row("config", `${plan.config.file}: valid (${plan.config.name} for ${plan.config.domain}, ${plan.config.release}, ${plan.config.arch})`);
  row("engine", `${plan.engine.id}: ${plan.engine.description}`);
  describeBase(plan.base).forEach((line, i) => row(i === 0 ? "base image" : "", line));
  row("steps", plan.steps.map((s, i) => `${i + 1}. ${s}`).join(", "));
  row("output", `${plan.out.dir}${plan.out.exists ? "" : " (made by the build)"}, dated the day the build runs:`);
  for (const f of plan.out.files) row("", `  ${f}`);
  lines.push("needs");
  const width = Math.max(...plan.requirements.map((r) => r.need.length));
  for (const r of plan.requirements) {
    const label = { ok: "ok     ", missing: "MISSING", note: "note   " }[r.state];
    const [first, ...rest] = r.detail.split("\n");
    lines.push(`  ${label}  ${r.need.padEnd(width)}  ${first}`);
    for (const more of rest) lines.push(`  ${" ".repeat(7 + 2 + width + 2)}${more}`);
    if (r.fix && !r.package) lines.push(`  ${" ".repeat(7 + 2 + width + 2)}fix: ${r.fix}`);
  }
  if (plan.install) lines.push(`install what is missing: ${plan.install}`);
  if (plan.canRun) lines.push(`the plan can run; build with: ${runCommand}`);
  else lines.push(`the plan cannot run yet: ${plan.problems.length} problem${plan.problems.length === 1 ? "" : "s"} (below)`);
  return lines;
}

function describeBase(base: PlannedBase): string[] {
  if (base.kind === "pi-gen") return ["none: pi-gen builds the system from scratch (pi-gen's own depends are checked once its checkout is ready)"];
  if (base.kind === "file") {
    if (base.problem) return [`${base.file}: ${base.problem}`];
    return [`${base.file}: ${formatBytes(base.size!)}, ${base.compression === "none" ? "not compressed" : `${base.compression}-compressed`}`];
  }
  const { image } = base;
  const lines: string[] = [];
  if (image.unavailable) return [image.unavailable];
  if (image.entry) {
    const e = image.entry;
    lines.push(`${e.name}: ${e.fileName}, released ${e.releaseDate}${e.downloadSize !== undefined ? `, ${formatBytes(e.downloadSize)} to download` : ""}`);
    lines.push(
      image.cached
        ? `already in the image cache (${image.cacheDir}): no download`
        : `not in the image cache yet: the build downloads and verifies it into ${image.cacheDir}`,
    );
    return lines;
  }
  if (!image.listProblem && image.cached) {
    // A pinned release that is cached: the build asks nobody.
    const c = image.cached;
    return [
      `${c.name}: ${c.fileName}, released ${c.releaseDate}, ${formatBytes(c.downloadSize)}`,
      `already in the image cache (${image.cacheDir}): no download, the OS list is not asked`,
    ];
  }
  lines.push(`the OS list ${image.listUrl} could not be asked (${image.listProblem})`);
  if (image.cached) {
    const c = image.cached;
    lines.push(
      `the build would use the newest cached image that fits: ${c.fileName}, released ${c.releaseDate}, ${formatBytes(c.downloadSize)} (${image.cacheDir})`,
    );
  } else {
    lines.push(`and no image that fits is in the cache (${image.cacheDir})`);
  }
  return lines;
}

/** The command that runs the plan: the same arguments, under sudo -E, without --dry-run and --json. */
export function runCommandOf(argv: readonly string[]): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return `sudo -E pibake ${argv
    .filter((a) => a !== "--dry-run" && a !== "--json")
    .map(quote)
    .join(" ")}`;
}

/** Print the plan (text, or JSON with --json); exit 2 with the problems when it cannot run. */
export async function dryRun(configPath: string, settings: BuildSettings, json: boolean): Promise<BuildPlan> {
  const out = createOutput({ plain: true });
  const plan = await planBuild(configPath, settings);
  for (const w of plan.config.warnings) out.warn(w);
  if (json) process.stdout.write(redact(JSON.stringify(plan, null, 2)) + "\n");
  else for (const line of formatPlan(plan, runCommandOf(process.argv.slice(2)))) out.info(line);
  if (!plan.canRun) throw new PibakeError(formatProblems(plan.problems, cannotRunHeading(plan.engine.description)), 2);
  return plan;
}
