import { existsSync, statSync } from "node:fs";
import path from "node:path";
import type { Model } from "../../config/model.js";
import { formatBytes } from "../../ui/output.js";
import { binfmtRequirement } from "../binfmt.js";
import { requirement } from "../problems.js";
import type { BuildRequest, Engine, Requirement } from "../types.js";
import { cacheDir } from "./checkout.js";
import { diskProblem, dockerAnswers, freeBytes, isDebianFamily, PI_GEN_MIN_FREE_BYTES, rootProblem } from "./preflight.js";

const RUNNERS = ["native", "docker"] as const;
export type Runner = (typeof RUNNERS)[number];

/**
 * The pi-gen engine as the build sees it: its step, options and checks. Its
 * work (src/engines/pigen/build.ts) is loaded only when it builds.
 */
export const piGenEngine: Engine = {
  id: "pi-gen",
  steps: () => [{ title: "pi-gen", failure: "the pi-gen build failed" }],
  options: [
    { key: "piGen", flag: "--pi-gen" },
    { key: "updatePiGen", flag: "--update-pi-gen" },
    { key: "runner", flag: "--runner" },
    { key: "baseStages", flag: "--base-stages" },
    { key: "clean", flag: "--clean" },
  ],

  optionsApplyTo: "the pi-gen build only (--engine pi-gen), not to builds from an image",
  describe: () => "with pi-gen",

  usageProblems(request) {
    if (request.runner !== undefined && !(RUNNERS as readonly string[]).includes(request.runner)) return [`--runner ${request.runner}: use native or docker`];
    return [];
  },

  inputs: () => [],

  async requirements(request, model) {
    const requirements: Requirement[] = [];
    if (request.piGen !== undefined) {
      const what = `--pi-gen ${request.piGen}: not a pi-gen checkout (no build.sh); give the directory of a pi-gen clone, or drop --pi-gen to let pibake fetch pi-gen`;
      requirements.push(
        requirement(`the pi-gen checkout ${request.piGen}`, "found", existsSync(path.join(request.piGen, "build.sh")) ? undefined : { what, usage: true }),
      );
    }
    userBaseStages(request, model).forEach(({ dir, field }) => {
      const isDir = existsSync(dir) && statSync(dir).isDirectory();
      requirements.push(
        requirement(
          `${field} ${dir}`,
          "found",
          isDir
            ? undefined
            : { what: `${field}: ${dir} is not a directory; give pi-gen stage directories (each with its prerun.sh and sub-stages)`, usage: true },
        ),
      );
    });
    requirements.push(binfmtRequirement(model.image.arch));
    if ((await chooseRunner(request)) === "native") {
      requirements.push(requirement("root (the native runner)", "running as root", rootProblem(), { root: true }));
      const dir = cacheDir();
      requirements.push(
        requirement(`about ${formatBytes(PI_GEN_MIN_FREE_BYTES)} free for pi-gen's work in ${dir}`, `${formatBytes(freeBytes(dir))} free`, diskProblem(dir)),
      );
    } else {
      const fix = "start Docker, or use --runner native as root on a Debian-family host";
      requirements.push(
        requirement(
          "a Docker engine (the docker runner)",
          "docker info answers",
          (await dockerAnswers()) ? undefined : { what: "no Docker engine answers (docker info failed)", fix },
        ),
      );
    }
    return requirements;
  },

  async build(input, reporter) {
    return (await import("./build.js")).buildWithPiGen(input, reporter);
  },
};

/** --base-stages (resolved from the working directory) wins over image.baseStages (resolved from the config file's). */
export function userBaseStages(request: BuildRequest, model: Model): { dir: string; field: string }[] {
  const fromCli = request.baseStages ?? [];
  if (fromCli.length > 0) return fromCli.map((d) => ({ dir: path.resolve(d), field: "--base-stages" }));
  return model.image.baseStages.map((dir, i) => ({ dir, field: `image.baseStages[${i}]` }));
}

export async function chooseRunner(request: BuildRequest): Promise<Runner> {
  if (request.runner) return request.runner as Runner;
  if (isDebianFamily() && process.getuid?.() === 0) return "native";
  if (await dockerAnswers()) return "docker";
  return "native";
}
