import type { CleanupScope } from "../cleanup.js";
import type { LoadedConfig } from "../config/load.js";
import type { Model } from "../config/model.js";
import type { Rendered } from "../render/index.js";
import type { Secrets, StateDir } from "../secrets/index.js";
import type { EngineResult } from "../image/types.js";
import type { StepReporter, StepSpec } from "../ui/steps.js";

export type { StepReporter, StepSpec } from "../ui/steps.js";

/**
 * An engine turns the rendered stage into a raw, complete `.img` in a work
 * directory of its own and hands back an EngineResult (src/image/types.ts);
 * delivering it is the same for every engine (src/image/deliver.ts).
 *
 * src/build.ts runs every engine the same way: its usage check, then every
 * preflight problem of the whole build at once, then render, then `build`
 * with a reporter for the engine's own steps, then delivery. Adding an engine
 * is a folder and a line in src/engines/index.ts.
 */
export interface Engine {
  /** What `pibake build` says it builds with: "pi-gen", "base". */
  readonly id: string;
  /** The engine's steps for this request, in order, as the user sees them between "render" and "deliver". */
  steps(request: BuildRequest): readonly StepSpec[];
  /** The build options only this engine takes. */
  readonly options: readonly EngineOption[];
  /** Completes "--clean applies to …" for its options given to another engine: "the pi-gen build only (--engine pi-gen), not to builds from an image". */
  readonly optionsApplyTo: string;
  /** "with pi-gen", "from 2025-11-24-raspios-trixie-arm64-lite.img.xz": for the build's first line. */
  describe(request: BuildRequest): string;
  /** Options it takes with values it cannot use: usage errors (exit 2), before anything is read. */
  usageProblems(request: BuildRequest): string[];
  /** Files the build reads and must never overwrite (the base image). */
  inputs(request: BuildRequest): { path: string; what: string }[];
  /**
   * Everything the build needs of this machine and of its inputs, each with
   * whether it is there: the build stops on the unmet ones (all at once,
   * before any work), and `build --dry-run` lists them all.
   */
  requirements(request: BuildRequest, model: Model): Promise<Requirement[]>;
  /** Things worth saying before a long build (free space), which do not stop it. */
  warnings?(request: BuildRequest, outDir: string): Promise<string[]>;
  build(input: EngineInput, reporter: StepReporter): Promise<EngineResult>;
}

export interface EngineOption {
  /** The BuildRequest field. */
  key: keyof BuildRequest;
  flag: string;
}

/** The build's engine options, as given on the command line (paths not yet resolved). */
export interface BuildRequest {
  /** --engine: "pi-gen" or "base"; otherwise chosen from the other options. */
  engine?: string;
  /** An image file, or "raspios" / "raspios@YYYY-MM-DD" for the official one (also the default). */
  base?: string;
  /** Where the official images are listed (Raspberry Pi Imager's OS list). */
  osList?: string;
  grow?: string;
  shrink?: boolean;
  /** --full: a build from an image pibake built takes the full path even when the fast one applies. */
  full?: boolean;
  piGen?: string;
  updatePiGen?: boolean;
  runner?: string;
  baseStages?: string[];
  clean?: boolean;
}

/** A reason the build cannot run here, and the command that fixes it when the message does not already say. */
export interface Problem {
  what: string;
  fix?: string;
  /** The config or the options are wrong (exit 2), not the machine (exit 1). */
  usage?: boolean;
}

/**
 * One thing a build needs, and whether it is there. `met` says how it is met
 * ("/usr/sbin/losetup"); when it is not, `problem` says why the build cannot
 * run, with its fix.
 */
export interface Requirement {
  /** "root", "qemu-aarch64 in binfmt_misc", "losetup", "--base x.img". */
  need: string;
  met?: string;
  problem?: Problem;
  /** A program, with the Debian package that has it and what needs it ("pibake build --base"). */
  program?: { name: string; package: string; neededBy: string };
  /** Being root: a dry run by another user only notes it, since the build itself is run with sudo -E. */
  root?: boolean;
}

export interface EngineInput {
  request: BuildRequest;
  config: LoadedConfig;
  state: StateDir;
  secrets: Secrets;
  rendered: Rendered;
  scope: CleanupScope;
  /** A private directory for the engine's work (removed after the build). */
  workDir: string;
  /** Where the engine writes its full log; delivered beside the image. */
  logPath: string;
  verbose: boolean;
}

export type { EngineResult } from "../image/types.js";
