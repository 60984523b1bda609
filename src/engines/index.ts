import { baseImageEngine } from "./base-image/engine.js";
import { piGenEngine } from "./pigen/engine.js";
import { PibakeError } from "../errors.js";
import type { BuildRequest, Engine } from "./types.js";

/** Every engine pibake has. Each one's work is loaded only when it builds. */
export const ENGINES: readonly Engine[] = [piGenEngine, baseImageEngine];

/**
 * The one place that decides which engine a build uses: the one asked for
 * with --engine; pi-gen when one of its options is given; otherwise a build
 * from an image (the official Raspberry Pi OS Lite unless --base names one).
 */
export function chooseEngine(request: BuildRequest): Engine {
  if (request.engine !== undefined) {
    const named = ENGINES.find((e) => e.id === request.engine);
    if (!named) throw new PibakeError(`--engine ${request.engine}: use ${ENGINES.map((e) => e.id).join(" or ")}`, 2);
    return named;
  }
  if (request.base === undefined && piGenEngine.options.some((o) => isGiven(request[o.key]))) return piGenEngine;
  return baseImageEngine;
}

/** Options given that belong to an engine other than the chosen one: one usage message per engine. */
export function foreignOptions(chosen: Engine, request: BuildRequest): string[] {
  const messages: string[] = [];
  for (const engine of ENGINES) {
    if (engine === chosen) continue;
    const given = engine.options.filter((o) => isGiven(request[o.key]) && !chosen.options.some((c) => c.key === o.key)).map((o) => o.flag);
    if (given.length > 0) messages.push(`${given.join(", ")} ${given.length === 1 ? "applies" : "apply"} to ${engine.optionsApplyTo}`);
  }
  return messages;
}

function isGiven(value: unknown): boolean {
  return value !== undefined && value !== false && !(Array.isArray(value) && value.length === 0);
}
