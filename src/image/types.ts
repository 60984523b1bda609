/**
 * What an engine hands to delivery: a raw, complete image and the facts about
 * it. It lives with the images, not the engines, so that delivery knows
 * images only and every engine produces the same record.
 */
export interface EngineResult {
  /** The finished raw image, in the engine's own work area (moved or copied by delivery). */
  imagePath: string;
  /** A bmap the engine already has (pi-gen may make one); delivery makes one otherwise. */
  bmapPath?: string;
  /** The raw image's sha256, when the engine computed it while writing the image (with bmapPath: delivery then reads the image only to compress it). */
  rawSha256?: string;
  /** Facts for the manifest, e.g. { engine: "pi-gen", piGenBranch, piGenCommit } or { engine: "base", baseImage, baseDigest }. */
  manifest: Record<string, unknown>;
  /** Named durations in milliseconds for the summary and the next build's estimate. */
  timings: Record<string, number>;
  /** Extra lines for the build summary, e.g. pi-gen's full and regeneration times. */
  summary?: string[];
}
