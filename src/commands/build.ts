/**
 * pibake build CONFIG [--base IMAGE]: with pi-gen, or from an existing
 * Raspberry Pi OS image. One list of named steps, shown as they run, each
 * with its own failure message; the engines differ only in the middle ones.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statfsSync } from "node:fs";
import { probeImage } from "../image/compression.js";
import path from "node:path";
import { withCleanup, type CleanupScope } from "../cleanup.js";
import { InterruptedError, PibakeError } from "../errors.js";
import { prepareSecrets, StateDir } from "../secrets/index.js";
import { protectedPaths, refuseProtectedOutput } from "../protected-paths.js";
import { render } from "../render/index.js";
import { summarize } from "../secrets/pki.js";
import { createOutput, formatBytes, formatDuration, type Output } from "../ui/output.js";
import { COMPRESSIONS, deliver, deliveryBaseName, pidAlive, removeStaleTemps, type DeliverCompression, type Delivered } from "../image/deliver.js";
import { BuildLog } from "../host/log.js";
import { mountsBelow } from "../host/mounts.js";
import { releaseBelow } from "../host/release.js";
import type { EngineInput, EngineResult } from "../engines/types.js";
import { loadBaseEngine, type BaseEngine } from "../engines/index.js";
import { buildWithPiGen } from "../engines/pigen/index.js";
import { loadAndWarn } from "./config.js";

export interface BuildOptions {
  out?: string;
  state?: string;
  compress?: string;
  base?: string;
  grow?: string;
  shrink?: boolean;
  verbose?: boolean;
  logFormat?: string;
  piGen?: string;
  updatePiGen?: boolean;
  runner?: string;
  baseStages?: string | string[];
  clean?: boolean;
}

const STEP_FAILURES: Record<string, string> = {
  render: "could not render the config (state directory, certificates, templates)",
  "prepare base": "could not prepare the base image",
  packages: "installing the stage's packages in the image failed",
  overlay: "applying the overlay and running the stage's scripts failed",
  finalize: "finalizing the image failed (clean-up, free blocks, file system check)",
  "pi-gen": "the pi-gen build failed",
  deliver: "delivering the image failed (compress, checksum, bmap, manifest)",
};

/** The steps as the user sees them: a numbered line when each starts, a tick and its time when it ends. */
export class Steps {
  current: string | undefined;
  private started = 0;
  readonly timings: Record<string, number> = {};

  constructor(
    readonly names: readonly string[],
    private readonly out: Output,
    private readonly log?: BuildLog,
  ) {}

  private index(name: string): string {
    const i = this.names.indexOf(name);
    return i < 0 ? "" : `[${i + 1}/${this.names.length}] `;
  }

  begin(name: string): void {
    this.end();
    this.current = name;
    this.started = Date.now();
    this.out.info(`${this.index(name)}${name}`);
    this.log?.line(`== step: ${name}`);
  }

  skip(name: string, why: string): void {
    this.end();
    this.out.info(`${this.index(name)}${name}: skipped, ${why}`);
    this.log?.line(`== step: ${name}: skipped, ${why}`);
  }

  status(message: string): void {
    this.out.status(`      ${message}`);
    this.log?.line(`   ${message}`);
  }

  end(): void {
    if (!this.current) return;
    const ms = Date.now() - this.started;
    this.timings[this.current] = ms;
    this.out.info(`      done in ${formatDuration(ms)}`);
    this.current = undefined;
  }

  /** The error the user sees: which step, what it was doing, why, and where the log is. */
  failure(err: unknown, logFile?: string): PibakeError {
    const step = this.current;
    const where = logFile ? `\nThe full log: ${logFile}` : "";
    if (err instanceof InterruptedError || (err instanceof PibakeError && err.exitCode === 130)) {
      return new PibakeError(`${err.message}${step ? ` during step "${step}"` : ""}: stopped and cleaned up; no image was written${where}`, 130);
    }
    const message = err instanceof Error ? err.message : String(err);
    const prefix = step ? `step "${step}" failed: ${STEP_FAILURES[step] ?? "it failed"}` : "the build failed";
    if (err instanceof PibakeError) return new PibakeError(`${prefix}:\n${message}${where}`, err.exitCode);
    return new PibakeError(`${prefix}: unexpected error: ${message}${where}`);
  }
}

function parseCompression(text: string | undefined): DeliverCompression {
  const c = (text ?? "xz").toLowerCase();
  if (c === "zst") return "zstd";
  if ((COMPRESSIONS as readonly string[]).includes(c)) return c as DeliverCompression;
  throw new PibakeError(`--compress ${text}: use xz, zstd or none`, 2);
}

function asList(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : (Array.isArray(v) ? v : [v]).map(String);
}

/** Usage errors (exit 2) before any work: options that do not go together. */
export function checkUsage(opts: BuildOptions): void {
  if (opts.logFormat !== undefined && !["auto", "plain"].includes(opts.logFormat)) {
    throw new PibakeError(`--log-format ${opts.logFormat}: use auto or plain`, 2);
  }
  parseCompression(opts.compress);
  if (opts.base !== undefined) {
    if (typeof opts.base !== "string" || opts.base === "") throw new PibakeError("--base needs an image file: .img, .img.xz, .img.gz, .img.zst or .zip", 2);
    const piGenOnly = [
      ["--pi-gen", opts.piGen !== undefined],
      ["--update-pi-gen", opts.updatePiGen === true],
      ["--runner", opts.runner !== undefined],
      ["--base-stages", opts.baseStages !== undefined],
      ["--clean", opts.clean === true],
    ].filter(([, set]) => set).map(([n]) => n);
    if (piGenOnly.length > 0) throw new PibakeError(`${piGenOnly.join(", ")} ${piGenOnly.length === 1 ? "applies" : "apply"} to the pi-gen build only, not with --base`, 2);
  } else {
    const baseOnly = [
      ["--grow", opts.grow !== undefined],
      ["--shrink", opts.shrink === true],
    ].filter(([, set]) => set).map(([n]) => n);
    if (baseOnly.length > 0) throw new PibakeError(`${baseOnly.join(", ")} ${baseOnly.length === 1 ? "applies" : "apply"} to builds from an image only: add --base IMAGE`, 2);
    if (opts.runner !== undefined && !["native", "docker"].includes(opts.runner)) throw new PibakeError(`--runner ${opts.runner}: use native or docker`, 2);
  }
}

/**
 * A build killed outright (SIGKILL, a crash) cannot clean up after itself:
 * the next build in the same --out releases what it left (processes in its
 * chroot, mounts, loop devices) and removes its work directory and temporary files.
 */
export async function recoverStale(outDir: string, out: Output): Promise<void> {
  if (!existsSync(outDir)) return;
  for (const name of readdirSync(outDir)) {
    const m = /^\.pibake-work-(\d+)$/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    const dir = path.join(outDir, name);
    const done = await releaseBelow(dir);
    if (mountsBelow(dir).length > 0) {
      out.warn(`${dir} is left from an interrupted build and still has mounts (${mountsBelow(dir).join(", ")}): unmount them, then remove it`);
      continue;
    }
    rmSync(dir, { recursive: true, force: true });
    out.info(`cleaned up after an interrupted build: ${[...done, `removed ${dir}`].join(", ")}`);
  }
  const temps = await removeStaleTemps(outDir);
  if (temps.length > 0) out.info(`removed ${temps.length} temporary file(s) of an interrupted build from ${outDir}`);
}

/** The working image lives in --out (holes are free, data is not): say so before a long build runs out of space. */
async function warnAboutSpace(base: string, outDir: string, out: Output): Promise<void> {
  try {
    const info = await probeImage(base);
    const raw = info.size ?? info.sizeHint;
    if (!raw) return;
    const st = statfsSync(outDir);
    const free = Number(st.bavail) * Number(st.bsize);
    const need = raw + 1024 ** 3;
    if (free < need) out.warn(`${outDir} has ${formatBytes(free)} free; a build from ${path.basename(base)} may need up to about ${formatBytes(need)} there (the working image, the packages, the delivered image)`);
  } catch {
    // The engine's own checks report an unreadable base.
  }
}

export async function runBuild(configPath: string, opts: BuildOptions): Promise<Delivered> {
  checkUsage(opts);
  const out = createOutput({ verbose: opts.verbose === true, plain: opts.logFormat === "plain" });
  const compress = parseCompression(opts.compress);
  const usingBase = opts.base !== undefined;
  let grow: "auto" | number = "auto";
  let baseEngine: BaseEngine | undefined;
  if (usingBase) {
    baseEngine = await loadBaseEngine();
    grow = baseEngine.parseGrow(opts.grow);
  }
  const loaded = loadAndWarn(configPath, out);
  const { model } = loaded;
  const outDir = path.resolve(opts.out ?? "deploy");
  const state = StateDir.locate(model.configDir, model.image.name, opts.state);
  refuseProtectedOutput(outDir, "--out", protectedPaths(model, state.dir, usingBase ? [{ path: opts.base!, what: "the base image (--base)" }] : []));
  const names = usingBase ? ["render", "prepare base", "packages", "overlay", "finalize", "deliver"] : ["render", "pi-gen", "deliver"];

  if (usingBase) {
    // Before any work: root, programs, qemu-user for the image's architecture, the base's format.
    await baseEngine!.preflightBase({ base: opts.base!, arch: model.image.arch, shrink: opts.shrink === true });
  }
  try {
    mkdirSync(outDir, { recursive: true });
  } catch (err) {
    throw new PibakeError(`cannot create the output directory ${outDir}: ${(err as Error).message}`);
  }
  await recoverStale(outDir, out);
  if (usingBase) await warnAboutSpace(opts.base!, outDir, out);

  const workDir = path.join(outDir, `.pibake-work-${process.pid}`);
  const logPath = path.join(workDir, "build.log");
  const buildStart = Date.now();
  out.info(`pibake build ${path.basename(configPath)}: ${model.image.name} for ${model.tls.domain} (${model.image.release}, ${model.image.arch})` + (usingBase ? ` from ${opts.base}` : " with pi-gen"));

  return withCleanup(async (scope) => {
    mkdirSync(workDir, { recursive: true, mode: 0o700 });
    // Registered first, so it runs last: after every mount and loop device is released.
    scope.defer(() => {
      if (mountsBelow(workDir).length > 0) throw new Error(`${workDir} still has mounts; not removed`);
      rmSync(workDir, { recursive: true, force: true });
    }, `remove ${workDir}`);
    const log = new BuildLog(logPath);
    log.line(`pibake build ${path.resolve(configPath)}${usingBase ? ` --base ${path.resolve(opts.base!)}` : ""} --out ${outDir} --compress ${compress}`);
    const steps = new Steps(names, out, log);
    try {
      return await buildSteps(scope, steps);
    } catch (caught) {
      // Once interrupted, whatever broke next (a killed child's pipe) is the interruption's doing.
      // An engine that says more about the interruption (how to continue) is heard out.
      const err = scope.signal.aborted && !(caught instanceof InterruptedError) ? scope.signal.reason : caught;
      log.line(`FAILED${steps.current ? ` in step ${steps.current}` : ""}: ${err instanceof Error ? err.message : String(err)}`);
      // The work directory goes with the clean-up; the log stays in --out for a look.
      let kept: string | undefined;
      if (!scope.signal.aborted) {
        kept = path.join(outDir, `${deliveryBaseName(model, new Date())}.failed.log`);
        try {
          copyFileSync(logPath, kept);
        } catch {
          kept = undefined;
        }
      }
      throw steps.failure(err, kept);
    }
  });

  async function buildSteps(scope: CleanupScope, steps: Steps): Promise<Delivered> {
    steps.begin("render");
    const secrets = prepareSecrets(model, state);
    const rendered = await render(model, secrets);
    steps.status(`certificate for ${model.tls.domain}: ${secrets.pki.serverCertStatus}; CA ${secrets.pki.caCreated ? "created" : "reused"} in ${state.dir}`);
    scope.throwIfInterrupted();

    const input: EngineInput = { config: loaded, state, secrets, rendered, output: out, scope, logPath, verbose: opts.verbose === true };
    let result: EngineResult;
    if (usingBase) {
      result = await baseEngine!.buildFromBase({
        ...input,
        base: path.resolve(opts.base!),
        workDir: path.join(workDir, "base"),
        grow,
        shrink: opts.shrink === true,
        steps: { begin: (n) => steps.begin(n), skip: (n, why) => steps.skip(n, why), status: (m) => steps.status(m) },
      });
    } else {
      steps.begin("pi-gen");
      result = await buildWithPiGen({
        ...input,
        ...(opts.piGen !== undefined ? { piGenDir: path.resolve(opts.piGen) } : {}),
        updatePiGen: opts.updatePiGen === true,
        ...(opts.runner !== undefined ? { runner: opts.runner as "native" | "docker" } : {}),
        baseStages: asList(opts.baseStages).map((d) => path.resolve(d)),
        clean: opts.clean === true,
      });
    }
    scope.throwIfInterrupted();

    steps.begin("deliver");
    const delivered = await deliver({
      result,
      model,
      secrets,
      rendered,
      state,
      outDir,
      compress,
      logPath,
      signal: scope.signal,
      timings: { render: steps.timings.render ?? 0 },
      onStatus: (phase, message) => steps.status(`${phase}: ${message}`),
    });
    steps.end();
    rmSync(path.join(outDir, `${delivered.baseName}.failed.log`), { force: true });

    const cert = summarize(secrets.pki.serverCertPem);
    out.info("");
    out.info(`built ${delivered.image} in ${formatDuration(Date.now() - buildStart)}${result.manifest.regeneration && result.manifest.engine === "base" ? " (regeneration: the packages were already in the base)" : ""}`);
    for (const line of result.summary ?? []) out.info(`  ${line}`);
    out.info(`  image       ${formatBytes(delivered.size)}${compress === "none" ? "" : ` (${formatBytes(delivered.rawSize)} raw)`}, sha256 ${delivered.sha256.slice(0, 16)}…`);
    out.info(`  checksum    ${path.basename(delivered.sha256File)}   (check: sha256sum -c ${path.basename(delivered.sha256File)})`);
    out.info(`  block map   ${path.basename(delivered.bmap)}   (bmaptool copy and pibake flash use it)`);
    out.info(`  manifest    ${path.basename(delivered.manifest)}`);
    out.info(`  log         ${path.basename(delivered.log)}`);
    out.info(`  CA          ${path.basename(delivered.caCert)}   install it on clients; it stays the same from build to build`);
    out.info(`  certificate ${model.tls.domain}, valid until ${cert.notAfter.toISOString().slice(0, 10)}`);
    out.info(`flash it: pibake flash ${path.relative(process.cwd(), delivered.image) || delivered.image}`);
    return delivered;
  }
}

