import type { CleanupScope } from "../cleanup.js";
import type { LoadedConfig } from "../config/load.js";
import type { Rendered } from "../render/index.js";
import type { Secrets, StateDir } from "../secrets/index.js";
import type { Output } from "../ui/output.js";

/**
 * What every engine is given and what it hands back. An engine turns a
 * rendered stage into a raw, complete `.img` in a work directory of its own;
 * delivering it (compression, checksum, bmap, manifest, ca.crt, the final
 * rename into --out) is the same for every engine (src/image/deliver.ts).
 */
export interface EngineInput {
  config: LoadedConfig;
  state: StateDir;
  secrets: Secrets;
  rendered: Rendered;
  output: Output;
  scope: CleanupScope;
  /** Where the engine writes its full log; delivered beside the image. */
  logPath: string;
  verbose: boolean;
}

export interface EngineResult {
  /** The finished raw image, in the engine's own work area (moved or copied by delivery). */
  imagePath: string;
  /** A bmap the engine already has (pi-gen may make one); delivery makes one otherwise. */
  bmapPath?: string;
  /** Facts for the manifest, e.g. { engine: "pi-gen", piGenBranch, piGenCommit } or { engine: "base", baseImage, baseDigest }. */
  manifest: Record<string, unknown>;
  /** Named durations in milliseconds for the summary and the next build's estimate. */
  timings: Record<string, number>;
  /** Extra lines for the build summary, e.g. pi-gen's full and regeneration times. */
  summary?: string[];
}
