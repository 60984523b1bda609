import { statfsSync } from "node:fs";
import path from "node:path";
import { probeImage } from "../../image/compression.js";
import { detectCompression } from "../../image/compression.js";
import { formatBytes } from "../../ui/output.js";
import { problemOf } from "../problems.js";
import type { Engine, Problem } from "../types.js";
import { checkBinfmt, checkPrograms, checkRoot } from "./preflight.js";
import { parseGrow } from "./resize.js";

/**
 * The base-image engine as the build sees it: its steps, options and checks.
 * Its work (src/engines/base-image/index.ts) is loaded only when it builds.
 */
export const baseImageEngine: Engine = {
  id: "base",
  steps: [
    { title: "prepare base", failure: "could not prepare the base image" },
    { title: "packages", failure: "installing the stage's packages in the image failed" },
    { title: "overlay", failure: "applying the overlay and running the stage's scripts failed" },
    { title: "finalize", failure: "finalizing the image failed (clean-up, free blocks, file system check)" },
  ],
  options: [
    { key: "base", flag: "--base" },
    { key: "grow", flag: "--grow" },
    { key: "shrink", flag: "--shrink" },
  ],

  optionsApplyTo: "builds from an image only: add --base IMAGE",
  describe: (request) => `from ${request.base}`,

  usageProblems(request) {
    if (typeof request.base !== "string" || request.base === "") return ["--base needs an image file: .img, .img.xz, .img.gz, .img.zst or .zip"];
    const problem = problemOfSync(() => parseGrow(request.grow));
    return problem ? [problem] : [];
  },

  inputs: (request) => [{ path: request.base!, what: "the base image (--base)" }],

  async preflight(request, model) {
    const problems = await Promise.all([
      problemOf(checkRoot),
      problemOf(async () => checkPrograms(await detectCompression(request.base!), request.shrink === true)),
      problemOf(() => checkBinfmt(model.image.arch)),
    ]);
    return problems.filter((p): p is Problem => p !== undefined);
  },

  /** The working image lives in --out (holes are free, data is not): say so before a long build runs out of space. */
  async warnings(request, outDir) {
    try {
      const info = await probeImage(request.base!);
      const raw = info.size ?? info.sizeHint;
      if (!raw) return [];
      const st = statfsSync(outDir);
      const free = Number(st.bavail) * Number(st.bsize);
      const need = raw + 1024 ** 3;
      if (free >= need) return [];
      return [`${outDir} has ${formatBytes(free)} free; a build from ${path.basename(request.base!)} may need up to about ${formatBytes(need)} there (the working image, the packages, the delivered image)`];
    } catch {
      // The preflight reports an unreadable base.
      return [];
    }
  },

  async build(input, reporter) {
    return (await import("./index.js")).buildFromBase(input, reporter);
  },
};

function problemOfSync(check: () => unknown): string | undefined {
  try {
    check();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
