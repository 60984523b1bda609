import type { Model } from "../config/model.js";
import { nodeRedVersionRequest, resolveNodeRedVersions, type NodeRedVersions, type RegistryLookup, type VersionRecordStore } from "./node-red.js";

/**
 * The versions step, before the secrets and the render: Node-RED's release
 * (and its dashboard's) asked of the npm registry once and recorded in the
 * state directory, so that the render itself needs no network and repeats.
 * A registry that does not answer costs at most REGISTRY_WAIT_MS, and its
 * fallback is said (and not recorded: the next render asks again).
 */
export async function resolveVersions(
  model: Model,
  state: VersionRecordStore,
  opts: { onStatus?: (message: string) => void; signal?: AbortSignal; lookup?: RegistryLookup; waitMs?: number } = {},
): Promise<NodeRedVersions | undefined> {
  const request = nodeRedVersionRequest(model);
  if (!request) return undefined;
  const started = Date.now();
  const { versions, asked, failure } = await resolveNodeRedVersions(state, request, {
    ...(opts.lookup ? { lookup: opts.lookup } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.waitMs !== undefined ? { waitMs: opts.waitMs } : {}),
    onAsking: (pkg, ms) => opts.onStatus?.(`asking the npm registry for ${pkg} (at most ${Math.round(ms / 1000)} s; PIBAKE_OFFLINE=1 skips it)…`),
  });
  const chosen = [versions.nodeRed, versions.dashboard].filter((c) => c !== undefined).map((c) => `${c.package} ${c.version} (${c.source})`);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (failure !== undefined) {
    opts.onStatus?.(
      `the npm registry gave no answer (${failure}, ${seconds}s): using ${chosen.join(", ")}, not recorded, so the next render asks again; set PIBAKE_OFFLINE=1 to not ask`,
    );
  } else {
    const fallback = [versions.nodeRed, versions.dashboard].some((c) => c?.source === "fallback");
    opts.onStatus?.(
      `${chosen.join(", ")}${asked ? `: asked the npm registry in ${seconds}s` : fallback ? ": the npm registry not asked (PIBAKE_OFFLINE=1)" : ": as recorded in the state directory"}`,
    );
  }
  return versions;
}
