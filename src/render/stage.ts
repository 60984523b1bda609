import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { stagesDir } from "../paths.js";
import { renderTemplateFile } from "./templates.js";
import type { OverlayFile } from "./overlay.js";
import type { View } from "./view.js";

/** A file of the rendered pi-gen stage, relative to the stage directory. */
export interface StageFile {
  path: string;
  content: Buffer;
  mode: number;
}

export const STAGE_NAME = "stage-pibake";
export const OVERLAY_IN_STAGE = "00-broker/files/overlay.tar";

/** Files in the stage template tree, recursively, relative to its root. */
function listTree(root: string, rel = ""): string[] {
  return readdirSync(path.join(root, rel), { withFileTypes: true }).flatMap((e) => {
    const p = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory() ? listTree(root, p) : [p];
  });
}

/**
 * stages/stage-pibake → the stage directory: `*.hbs` rendered (the suffix dropped),
 * other files copied; scripts executable, as pi-gen only runs executable NN-run.sh.
 */
export function renderStage(view: View, overlay: OverlayFile[], overlayTar: Buffer): StageFile[] {
  const root = path.join(stagesDir, STAGE_NAME);
  const stageView = {
    ...view,
    owners: overlay.filter((f) => f.owner !== "root" || f.group !== "root").map((f) => ({ path: `/${f.path}`, owner: f.owner, group: f.group })),
  };
  const files: StageFile[] = listTree(root).map((rel) => {
    const src = path.join(root, rel);
    const isTemplate = rel.endsWith(".hbs");
    const out = isTemplate ? rel.slice(0, -4) : rel;
    const content = isTemplate ? Buffer.from(renderTemplateFile(src, stageView)) : readFileSync(src);
    const executable = out.endsWith(".sh") || (statSync(src).mode & 0o111) !== 0;
    return { path: out, content, mode: executable ? 0o755 : 0o644 };
  });
  // The overlay holds the server key and the ddclient token.
  files.push({ path: OVERLAY_IN_STAGE, content: overlayTar, mode: 0o600 });
  return files.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** Remove comments and blank lines as pi-gen's remove-comments.sed does. */
export function packageList(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.replace(/#.*$/, "").trim())
    .filter(Boolean)
    .flatMap((l) => l.split(/\s+/));
}

/** The stage's package files that run: NN-packages and NN-packages-nr of every sub-stage without a SKIP. */
export function stagePackageFiles({ stage }: { stage: StageFile[] }): StageFile[] {
  return stage.filter((f) => /^[^/]+\/\d\d-packages(-nr)?$/.test(f.path) && !stage.some((s) => s.path === `${f.path.split("/")[0]}/SKIP`));
}

/** Every package the rendered stage installs: what a build from a base image installs, and what push compares with the Pi. */
export function stagePackages(rendered: { stage: StageFile[] }): string[] {
  return [...new Set(stagePackageFiles(rendered).flatMap((f) => packageList(f.content.toString("utf8"))))].sort();
}

export function renderPiGenConfig(view: View): string {
  return renderTemplateFile(path.join(stagesDir, "pi-gen.config.hbs"), view);
}
