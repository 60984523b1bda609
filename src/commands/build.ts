/** pibake build CONFIG: the command line's options as one build (src/build.ts), or its plan (--dry-run, src/build-plan.ts). */
import type { Delivered } from "../image/deliver.js";
import type { BuildPlan } from "../build-plan.js";
import { runBuild, type BuildSettings } from "../build.js";
import { PibakeError } from "../errors.js";

export interface BuildOptions {
  out?: string;
  state?: string;
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
  if (opts.dryRun) return (await import("../build-plan.js")).dryRun(configPath, buildSettings(opts), opts.json === true);
  return runBuild(configPath, buildSettings(opts));
}
