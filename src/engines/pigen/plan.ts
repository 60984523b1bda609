import { createHash } from "node:crypto";
import type { Arch, Release } from "../../config/model.js";
import { shellQuote, uncommentedLines } from "../../host/shell.js";
import { systemDigest, type SystemSettings } from "../../render/system.js";

/**
 * Everything about a pi-gen build that can be decided without running
 * anything: the branch, the stage list, the config pibake hands to build.sh,
 * and whether stage0-2 can be reused. Tested table-driven.
 */

export const PI_GEN_REPO = "https://github.com/RPi-Distro/pi-gen";

/** pi-gen keeps one branch per release and architecture. */
export function piGenBranch(release: Release, arch: Arch): string {
  if (release === "trixie") return arch === "arm64" ? "arm64" : "master";
  return arch === "arm64" ? "bookworm-arm64" : "bookworm";
}

export const BASE_STAGES = ["stage0", "stage1", "stage2"] as const;
export const PIBAKE_STAGE = "stage-pibake";

/** User base stages are copied into pibake's tree copy under these names, so that the Docker build sees them too. */
export function baseStageNames(userBaseStages: string[]): string[] {
  return userBaseStages.length === 0 ? [...BASE_STAGES] : userBaseStages.map((_, i) => `stage-base${i}`);
}

export function stageList(userBaseStages: string[]): string {
  return [...baseStageNames(userBaseStages), PIBAKE_STAGE].join(" ");
}

export interface PiGenConfigOverrides {
  stageList: string;
  /** Native builds keep pi-gen's work and deploy directories in pibake's cache, outside the tree copy. */
  workDir?: string;
  deployDir?: string;
  gitHash: string;
}

/** The rendered pi-gen.config plus what only the engine knows; later assignments win when build.sh sources it. */
export function piGenConfigFile(rendered: string, o: PiGenConfigOverrides): string {
  const lines = [
    rendered.trimEnd(),
    "",
    "# Set by pibake's pi-gen engine for this build.",
    `STAGE_LIST=${shellQuote(o.stageList)}`,
    `GIT_HASH=${shellQuote(o.gitHash)}`,
  ];
  if (o.workDir) lines.push(`WORK_DIR=${shellQuote(o.workDir)}`);
  if (o.deployDir) lines.push(`DEPLOY_DIR=${shellQuote(o.deployDir)}`);
  return lines.join("\n") + "\n";
}

/**
 * What feeds stage0-2 and nothing else. The domain, certificates, MQTT users,
 * ddclient and even the first user's password are not in it: pi-gen sets a
 * throw-away password there, and stage-pibake sets the real one.
 */
/**
 * What stage0-2 depend on: pi-gen's commit, the system settings (the same
 * digest a build from an image keeps in its marker), pi-gen's throw-away
 * first password, and the user's own base stages.
 */
export function baseDigest(system: SystemSettings, piGenCommit: string, baseStagesDigest: string, placeholder: string): string {
  return createHash("sha256")
    .update(JSON.stringify({ piGenCommit, system: systemDigest(system), placeholder, baseStagesDigest }))
    .digest("hex");
}

export interface ReuseFacts {
  clean: boolean;
  recordedDigest?: string;
  currentDigest: string;
  /** stage2's (or the last base stage's) rootfs is there and looks complete. */
  baseRootfsIntact: boolean;
}

export type ReuseDecision = { reuse: true; reason: string } | { reuse: false; reason: string };

export function decideReuse(f: ReuseFacts): ReuseDecision {
  if (f.clean) return { reuse: false, reason: "--clean asks for a full build" };
  if (!f.recordedDigest) return { reuse: false, reason: "no earlier build of this image to reuse" };
  if (f.recordedDigest !== f.currentDigest)
    return { reuse: false, reason: "the base system's inputs changed (pi-gen commit, release, user, locale, keyboard, time zone, SSH or Wi-Fi country)" };
  if (!f.baseRootfsIntact) return { reuse: false, reason: "the earlier build's base root filesystem is missing or incomplete" };
  return { reuse: true, reason: "the base system is unchanged: stage0-2 are reused, only stage-pibake and the export run" };
}

/** pi-gen's `depends` file: `tool[:package]` per line, comments removed. */
export function parseDepends(text: string): { tool: string; pkg: string }[] {
  return uncommentedLines(text).map((dep) => {
    const [tool, pkg] = dep.split(":") as [string, string | undefined];
    return { tool, pkg: pkg ?? tool };
  });
}

export function aptInstallLine(packages: string[]): string {
  return `sudo apt-get install -y ${[...new Set(packages)].join(" ")}`;
}
