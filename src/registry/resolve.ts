import type { Model } from "../config/model.js";
import { nodeRedVersionRequest, resolveNodeRedVersions, type NodeRedVersions, type RegistryLookup, type VersionRecordStore } from "./node-red.js";

/**
 * The versions step, before the secrets and the render: Node-RED's release
 * (and its dashboard's) asked of the npm registry once and recorded in the
 * state directory, so that the render itself needs no network and repeats.
 */
export async function resolveVersions(
  model: Model,
  state: VersionRecordStore,
  opts: { onStatus?: (message: string) => void; signal?: AbortSignal; lookup?: RegistryLookup } = {},
): Promise<NodeRedVersions | undefined> {
  const request = nodeRedVersionRequest(model);
  if (!request) return undefined;
  const started = Date.now();
  const { versions, asked } = await resolveNodeRedVersions(state, request, opts.lookup, undefined, opts.signal);
  const chosen = [versions.nodeRed, versions.dashboard].filter((c) => c !== undefined).map((c) => `${c.package} ${c.version} (${c.source})`);
  opts.onStatus?.(`${chosen.join(", ")}${asked ? `: asked the npm registry in ${((Date.now() - started) / 1000).toFixed(1)}s` : ": as recorded in the state directory"}`);
  return versions;
}
