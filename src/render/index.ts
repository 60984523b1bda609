import type { Model } from "../config/model.js";
import type { Secrets } from "../secrets/index.js";
import { renderOverlay, type OverlayFile } from "./overlay.js";
import { renderPiGenConfig, renderStage, type StageFile } from "./stage.js";
import { packOverlay } from "./tar.js";
import { buildView } from "./view.js";
import { nodeRedManifest } from "./node-red.js";
import type { SystemSettings } from "./system.js";

/** Everything a build needs, in memory: the engines decide where it goes. */
export interface Rendered {
  overlay: OverlayFile[];
  overlayTar: Buffer;
  stage: StageFile[];
  piGenConfig: string;
  /** What pi-gen's config does to the system, for both engines. */
  system: SystemSettings;
  caCertPem: string;
  /** What the build records about its choices (e.g. the Node-RED version); written as manifest.json. */
  manifest: Record<string, unknown>;
}

export async function render(model: Model, secrets: Secrets): Promise<Rendered> {
  const view = buildView(model, secrets);
  const overlay = renderOverlay(view);
  const overlayTar = await packOverlay(overlay);
  return {
    overlay,
    overlayTar,
    stage: renderStage(view, overlay, overlayTar),
    piGenConfig: renderPiGenConfig(view),
    system: view.system,
    caCertPem: secrets.pki.caCertPem,
    manifest: { ...nodeRedManifest(model, secrets) },
  };
}
