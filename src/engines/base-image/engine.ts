import { existsSync, statfsSync } from "node:fs";
import path from "node:path";
import { probeImage } from "../../image/compression.js";
import { detectCompression, type Compression } from "../../image/compression.js";
import { formatBytes } from "../../ui/output.js";
import { binfmtRequirement } from "../binfmt.js";
import { problemOf, programRequirements, requirement } from "../problems.js";
import type { BuildRequest, Engine, Problem, Requirement } from "../types.js";
import type { Model } from "../../config/model.js";
import { basePrograms, checkRoot } from "./preflight.js";
import { parseGrow } from "./resize.js";

/**
 * The base-image engine as the build sees it: its steps, options and checks.
 * Its work (src/engines/base-image/build.ts) is loaded only when it builds.
 */
export const baseImageEngine: Engine = {
  id: "base",
  steps: (request) => [
    ...(officialBase(request) ? [{ title: "download base", failure: "could not get the official Raspberry Pi OS Lite image" }] : []),
    { title: "prepare base", failure: "could not prepare the base image" },
    { title: "packages", failure: "installing the stage's packages in the image failed" },
    { title: "overlay", failure: "applying the overlay and running the stage's scripts failed" },
    { title: "finalize", failure: "finalizing the image failed (clean-up, free blocks, file system check)" },
  ],
  options: [
    { key: "base", flag: "--base" },
    { key: "osList", flag: "--os-list" },
    { key: "grow", flag: "--grow" },
    { key: "shrink", flag: "--shrink" },
    { key: "full", flag: "--full" },
  ],

  optionsApplyTo: "builds from an image only, not to pi-gen builds",
  describe(request) {
    const official = officialBase(request);
    if (!official) return `from ${request.base}`;
    return `from the official Raspberry Pi OS Lite${official.date ? ` of ${official.date}` : ""}`;
  },

  usageProblems(request) {
    const problems: string[] = [];
    if (request.base !== undefined && (typeof request.base !== "string" || request.base === "")) {
      problems.push("--base needs an image file (.img, .img.xz, .img.gz, .img.zst or .zip), or raspios@YYYY-MM-DD for an official release");
    } else if (request.base !== undefined && /^raspios(@|$)/.test(request.base) && !officialBase(request)) {
      problems.push(`--base ${request.base}: give the official release as raspios@YYYY-MM-DD, e.g. raspios@2025-12-04`);
    }
    if (request.osList !== undefined && !officialBase(request)) problems.push("--os-list applies to builds from the official image only, not with --base FILE");
    const grow = problemOfSync(() => parseGrow(request.grow));
    if (grow) problems.push(grow);
    return problems;
  },

  inputs: (request) => (officialBase(request) ? [] : [{ path: request.base!, what: "the base image (--base)" }]),

  async requirements(request, model) {
    const official = officialBase(request);
    const requirements: Requirement[] = [];
    // A --base that names nothing is a usage error (exit 2), like a missing config.
    const missing = !official && !existsSync(request.base!);
    // The official images are .img.xz.
    let compression: Compression = official ? "xz" : "none";
    if (!official) {
      const need = `the base image ${request.base}`;
      let unreadable: string | undefined;
      if (!missing) compression = await detectCompression(request.base!).catch((err: Error) => ((unreadable = err.message), "none" as const));
      if (missing) {
        const what = `--base ${request.base}: no such file; give a Raspberry Pi OS image (.img, .img.xz, .img.gz, .img.zst or .zip), or raspios@YYYY-MM-DD`;
        requirements.push({ need, problem: { what, usage: true } });
      } else requirements.push(requirement(need, "found", unreadable));
    }
    if (!official && !missing && compression === "none" && request.full !== true && (await isFastCandidate(request.base!))) {
      // Whether the render changes only files is known after it: the full path's needs are checked then (fullPathRequirements).
      requirements.push(
        requirement(
          "an image pibake built, for a fast regeneration",
          "its build.json found: root is needed only if the new config changes more than files",
          undefined,
        ),
      );
    } else requirements.push(...fullPathRequirements(request, model, compression, await problemOf(() => checkRoot(request.base))));
    if (model.image.baseStages.length > 0) {
      const what = "image.baseStages: pi-gen stages apply to pi-gen builds: add --engine pi-gen, or remove image.baseStages to build from an image";
      requirements.push({ need: "no image.baseStages", problem: { what, usage: true } });
    }
    return requirements;
  },

  /** The working image lives in --out (holes are free, data is not): say so before a long build runs out of space. */
  async warnings(request, outDir) {
    if (officialBase(request)) return [];
    try {
      const info = await probeImage(request.base!);
      const raw = info.size ?? info.sizeHint;
      if (!raw) return [];
      const st = statfsSync(outDir);
      const free = Number(st.bavail) * Number(st.bsize);
      const need = raw + 1024 ** 3;
      if (free >= need) return [];
      return [
        `${outDir} has ${formatBytes(free)} free; a build from ${path.basename(request.base!)} may need up to about ${formatBytes(need)} there (the working image, the packages, the delivered image)`,
      ];
    } catch {
      // The preflight reports an unreadable base.
      return [];
    }
  },

  async build(input, reporter) {
    return (await import("./build.js")).buildFromBase(input, reporter);
  },
};

/** What the full path (loop devices, mounts, the chroot) needs of this machine. */
export function fullPathRequirements(request: BuildRequest, model: Model, compression: Compression, rootProblem: Problem | undefined): Requirement[] {
  return [
    requirement("root", "running as root", rootProblem, { root: true }),
    ...programRequirements(basePrograms(compression, request.shrink === true), "pibake build --base"),
    binfmtRequirement(model.image.arch),
  ];
}

/** The fast path needs WebAssembly only; loaded when a base is looked at. */
async function isFastCandidate(base: string): Promise<boolean> {
  return (await import("./fast/regenerate.js")).isFastCandidate(base);
}

/**
 * The official image is the base when no file is named: `--base raspios`,
 * `--base raspios@DATE` (a pinned release), or no --base at all; a date in
 * the option wins over image.raspiosDate in the config.
 */
export function officialBase(request: BuildRequest): { date?: string } | undefined {
  if (request.base === undefined || request.base === "raspios") return {};
  const m = /^raspios@(\d{4}-\d{2}-\d{2})$/.exec(request.base);
  return m ? { date: m[1]! } : undefined;
}

function problemOfSync(check: () => unknown): string | undefined {
  try {
    check();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
