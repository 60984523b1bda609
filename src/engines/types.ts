import type { CleanupScope } from "../cleanup.js";
import type { LoadedConfig } from "../config/load.js";
import type { Rendered } from "../render/index.js";
import type { Secrets, StateDir } from "../secrets/index.js";
import type { Output } from "../ui/output.js";

/**
 * What every engine is given and what it hands back (EngineResult, which
 * src/image/types.ts defines because delivery reads it). An engine turns a
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

export type { EngineResult } from "../image/types.js";
