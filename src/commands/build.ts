/** pibake build CONFIG: the command line's options as one build (src/build.ts), or its plan (--dry-run, src/build-plan.ts). */
import type { Delivered } from "../image/deliver.js";
import type { BuildPlan } from "../build-plan.js";
import path from "node:path";
import { runBuild, type BuildOutcome, type BuildSettings } from "../build.js";
import { createOutput, formatBytes, formatDuration, type Output } from "../ui/output.js";
import { PibakeError } from "../errors.js";

export interface BuildOptions {
  out?: string;
  state?: string | string[];
  compress?: string;
  engine?: string;
  base?: string;
  osList?: string;
  grow?: string;
  shrink?: boolean;
  full?: boolean;
  verbose?: boolean;
  logFormat?: string;
  piGen?: string;
  updatePiGen?: boolean;
  runner?: string;
  baseStages?: string | string[];
  clean?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

/** The engines' options as given: a repeated option is a list, a flag given once a value. */
export function buildSettings(opts: BuildOptions): BuildSettings {
  const { out, state, compress, verbose, logFormat, engine: engineId, base, osList, grow, shrink, full, piGen, updatePiGen, runner, baseStages, clean } = opts;
  const engine = { engine: engineId, base, osList, grow, shrink, full, piGen, updatePiGen, runner, clean };
  const request = Object.fromEntries(Object.entries(engine).filter(([, v]) => v !== undefined)) as BuildSettings["request"];
  if (baseStages !== undefined) request.baseStages = (Array.isArray(baseStages) ? baseStages : [baseStages]).map(String);
  return {
    request,
    ...(out !== undefined ? { out } : {}),
    ...(state !== undefined ? { state } : {}),
    ...(compress !== undefined ? { compress } : {}),
    ...(verbose !== undefined ? { verbose } : {}),
    ...(logFormat !== undefined ? { logFormat } : {}),
  };
}

export async function buildCommand(configPath: string, opts: BuildOptions): Promise<Delivered | BuildPlan> {
  if (opts.json && !opts.dryRun) throw new PibakeError("--json goes with --dry-run: pibake build CONFIG --dry-run --json", 2);
  const settings = buildSettings(opts);
  if (opts.dryRun) return (await import("../build-plan.js")).dryRun(configPath, settings, opts.json === true);
  const out = createOutput({ verbose: settings.verbose === true, plain: settings.logFormat === "plain" });
  const outcome = await runBuild(configPath, settings, out);
  printSummary(outcome, out);
  return outcome.delivered;
}

/** What was built, where its files are, and the next step. */
function printSummary(o: BuildOutcome, out: Output): void {
  const { delivered } = o;
  out.info("");
  out.info(`built ${delivered.image} in ${formatDuration(o.took)}${o.regeneration ? " (regeneration: the packages were already in the base)" : ""}`);
  for (const line of o.engineSummary) out.info(`  ${line}`);
  out.info(
    `  image       ${formatBytes(delivered.size)}${o.compress === "none" ? "" : ` (${formatBytes(delivered.rawSize)} raw)`}, sha256 ${delivered.sha256.slice(0, 16)}…`,
  );
  out.info(`  checksum    ${path.basename(delivered.sha256File)}   (check: sha256sum -c ${path.basename(delivered.sha256File)})`);
  out.info(`  block map   ${path.basename(delivered.bmap)}   (bmaptool copy and pibake flash use it)`);
  out.info(`  manifest    ${path.basename(delivered.manifest)}`);
  out.info(`  log         ${path.basename(delivered.log)}`);
  out.info(`  CA          ca.crt   install it on clients; it stays the same from build to build`);
  out.info(`  certificate ${o.model.tls.domain}, valid until ${o.certificateUntil.toISOString().slice(0, 10)}`);
  out.info(`flash it: pibake flash ${path.relative(process.cwd(), delivered.image) || delivered.image}`);
}
