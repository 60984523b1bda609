/**
 * A build, the same for every engine: usage → every preflight problem at
 * once → render → the engine's steps → delivery → summary. The engine is
 * chosen in src/engines/index.ts; the steps are shown by src/ui/steps.ts.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { withCleanup, type CleanupScope } from "./cleanup.js";
import { InterruptedError, PibakeError } from "./errors.js";
import type { Model } from "./config/model.js";
import type { StateDir, Secrets } from "./secrets/index.js";
import { configDigests } from "./secrets/digests.js";
import { summarize } from "./secrets/pki.js";
import { protectedPaths, refuseProtectedOutput } from "./protected-paths.js";
import type { Rendered } from "./render/index.js";
import type { Output } from "./ui/output.js";
import { openConfig, prepareAndRender, type OpenedConfig, type Prepared } from "./pipeline.js";
import { buildSteps, Steps, type StepSpec } from "./ui/steps.js";
import { COMPRESSIONS, deliver, isoDate, removeStaleTemps, type DeliverCompression, type Delivered } from "./image/deliver.js";
import { BuildLog } from "./host/log.js";
import { pidAlive } from "./host/process.js";
import { mountsBelow } from "./host/mounts.js";
import { releaseBelow } from "./host/release.js";
import { giveTo, mkdirOwned } from "./host/sudo.js";
import { chooseEngine, foreignOptions } from "./engines/index.js";
import { problemsError, problemsOf, programRequirements } from "./engines/problems.js";
import type { BuildRequest, Engine, EngineResult, Requirement } from "./engines/types.js";

export interface BuildSettings {
  /** Where the image and its files go (default ./deploy). */
  out?: string;
  state?: string | string[];
  compress?: string;
  verbose?: boolean;
  logFormat?: string;
  /** The engine's options. */
  request: BuildRequest;
}

export function parseCompression(text: string | undefined): DeliverCompression {
  const c = (text ?? "xz").toLowerCase();
  if (c === "zst") return "zstd";
  if ((COMPRESSIONS as readonly string[]).includes(c)) return c as DeliverCompression;
  throw new PibakeError(`--compress ${text}: use xz, zstd or none`, 2);
}

/** Usage errors (exit 2) before any work: options that do not go together, values an engine cannot use. Returns the engine. */
export function checkUsage(settings: BuildSettings): Engine {
  if (settings.logFormat !== undefined && !["auto", "plain"].includes(settings.logFormat)) {
    throw new PibakeError(`--log-format ${settings.logFormat}: use auto or plain`, 2);
  }
  parseCompression(settings.compress);
  const engine = chooseEngine(settings.request);
  const problems = [...foreignOptions(engine, settings.request), ...engine.usageProblems(settings.request)];
  if (problems.length > 0) throw new PibakeError(problems.join("\n"), 2);
  return engine;
}

/** `<name>-<domain>-<date>`: every delivered file's name starts with it. */
export function deliveryBaseName(model: Model, date: Date): string {
  return `${model.image.name}-${model.tls.domain}-${isoDate(date)}`;
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

/** What the manifest says about the build beyond the image: the config (digests, never secrets), the certificates, the render. */
export function buildFacts(model: Model, secrets: Secrets, rendered: Rendered, state: StateDir): Record<string, unknown> {
  const cert = summarize(secrets.pki.serverCertPem);
  const ca = summarize(secrets.pki.caCertPem);
  const { digest, secretsHmac } = configDigests(model, state);
  return {
    name: model.image.name,
    hostname: model.image.hostname,
    release: model.image.release,
    arch: model.image.arch,
    domain: model.tls.domain,
    config: { file: path.basename(model.configPath), digest, secrets: secretsHmac },
    certificate: {
      subject: cert.subject,
      issuer: cert.issuer,
      sha256Fingerprint: cert.fingerprint256,
      notBefore: cert.notBefore.toISOString(),
      notAfter: cert.notAfter.toISOString(),
      dnsNames: cert.dnsNames,
      ipAddresses: cert.ipAddresses,
    },
    ca: { subject: ca.subject, sha256Fingerprint: ca.fingerprint256, notAfter: ca.notAfter.toISOString() },
    render: rendered.manifest,
  };
}

/** The CA certificate delivered beside the image, for the clients. */
export const CA_FILE = "ca.crt";

/**
 * Everything the build needs of this machine and its inputs: the engine's,
 * and the compressor delivery runs. The build stops on the unmet ones;
 * build --dry-run lists them all.
 */
export async function buildRequirements(engine: Engine, request: BuildRequest, model: Model, compress: DeliverCompression): Promise<Requirement[]> {
  const requirements = await engine.requirements(request, model);
  const programs = new Set(requirements.flatMap((r) => (r.program ? [r.program.name] : [])));
  const compressor = compress === "none" || programs.has(compress) ? [] : programRequirements([compress], `--compress ${compress}`);
  return [...requirements, ...compressor];
}

/** The heading over the problems that stop a build. */
export function cannotRunHeading(engineDescription: string): string {
  return `pibake build ${engineDescription} cannot run here yet`;
}

export interface BuildScope {
  /** Removed with the clean-up, after every mount in it is released. */
  workDir: string;
  logPath: string;
  /** The log's first line: what was run. */
  firstLine: string;
  steps: readonly StepSpec[];
  out: Output;
  /** Where the log is kept when the build fails (not when it is interrupted). */
  failedLog: () => string;
}

/**
 * One build's clean-up scope, whatever ends it: its work directory, its log
 * and its steps; a failure (an exception that escaped to the CLI's last
 * resort too) is logged, names its step and keeps the log in --out.
 */
export function inBuildScope<T>(b: BuildScope, body: (scope: CleanupScope, steps: Steps, log: BuildLog) => Promise<T>): Promise<T> {
  return withCleanup(async (scope) => {
    mkdirSync(b.workDir, { recursive: true, mode: 0o700 });
    // Registered first, so it runs last: after every mount and loop device is released.
    scope.defer(() => {
      if (mountsBelow(b.workDir).length > 0) throw new Error(`${b.workDir} still has mounts; not removed`);
      rmSync(b.workDir, { recursive: true, force: true });
    }, `remove ${b.workDir}`);
    const log = new BuildLog(b.logPath);
    log.line(b.firstLine);
    const steps = new Steps(b.steps, b.out, log);
    // Should a crash leave the body hanging, its clean-up runs without it: the log is kept before the work directory goes.
    let bodyEnded = false;
    let kept: string | undefined;
    const keepLog = () => {
      kept ??= b.failedLog();
      try {
        copyFileSync(b.logPath, kept);
        giveTo(kept);
      } catch {
        kept = undefined;
      }
    };
    scope.defer(() => {
      if (bodyEnded || !scope.signal.aborted || scope.signal.reason instanceof InterruptedError) return;
      log.line(
        `FAILED${steps.current ? ` in step ${steps.current.title}` : ""}, which did not stop: ${String((scope.signal.reason as Error)?.message ?? scope.signal.reason)}`,
      );
      keepLog();
    }, "keep the log");
    scope.describe(() => `${steps.current ? `in step "${steps.current.title}"` : "in the build"}${kept ? ` (the full log: ${kept})` : ""}`);
    try {
      return await body(scope, steps, log);
    } catch (caught) {
      // Once interrupted, whatever broke next (a killed child's pipe) is the interruption's doing.
      // An engine that says more about the interruption (how to continue) is heard out.
      const err = scope.signal.aborted && !(caught instanceof InterruptedError) ? scope.signal.reason : caught;
      log.line(`FAILED${steps.current ? ` in step ${steps.current.title}` : ""}: ${err instanceof Error ? err.message : String(err)}`);
      // The work directory goes with the clean-up; the log stays in --out for a look, unless the user stopped the build.
      if (!(scope.signal.reason instanceof InterruptedError)) keepLog();
      throw steps.failure(err, kept);
    } finally {
      bodyEnded = true;
    }
  });
}

/** What a finished build hands back; commands/build.ts prints its summary. */
export interface BuildOutcome {
  delivered: Delivered;
  model: Model;
  took: number;
  /** A build from an image pibake made: the packages were already there. */
  regeneration: boolean;
  /** The engine's own lines for the summary. */
  engineSummary: string[];
  compress: DeliverCompression;
  certificateUntil: Date;
}

/** One build, from its checked start to delivery: what its steps share. */
interface OpenedBuild extends OpenedConfig {
  configPath: string;
  settings: BuildSettings;
  engine: Engine;
  request: BuildRequest;
  out: Output;
  compress: DeliverCompression;
  outDir: string;
  workDir: string;
  logPath: string;
  started: number;
}

export async function runBuild(configPath: string, settings: BuildSettings, out: Output): Promise<BuildOutcome> {
  const b = await openBuild(configPath, settings, out);
  const { model, request, engine } = b;
  out.info(
    `pibake build ${path.basename(configPath)}: ${model.image.name} for ${model.tls.domain} (${model.image.release}, ${model.image.arch}) ${engine.describe(request)}`,
  );
  return inBuildScope(
    {
      workDir: b.workDir,
      logPath: b.logPath,
      firstLine: `pibake build ${path.resolve(configPath)}${request.base !== undefined ? ` --base ${path.resolve(request.base)}` : ""} --out ${b.outDir} --compress ${b.compress}`,
      steps: buildSteps(engine.steps(request)),
      out,
      failedLog: () => path.join(b.outDir, `${deliveryBaseName(model, new Date())}.failed.log`),
    },
    async (scope, steps, log) => {
      const prepared = await renderStep(b, scope, steps);
      const result = await engine.build(
        {
          request,
          config: b.loaded,
          state: b.state,
          secrets: prepared.secrets,
          rendered: prepared.rendered,
          scope,
          workDir: b.workDir,
          logPath: b.logPath,
          verbose: settings.verbose === true,
        },
        steps,
      );
      scope.throwIfInterrupted();
      const delivered = await deliverStep(b, result, prepared, scope, steps, log);
      return {
        delivered,
        model,
        took: Date.now() - b.started,
        regeneration: result.manifest.regeneration === true && result.manifest.engine === "base",
        engineSummary: result.summary ?? [],
        compress: b.compress,
        certificateUntil: summarize(prepared.secrets.pki.serverCertPem).notAfter,
      };
    },
  );
}

/** Before any work: the usage, the config, the output directory, and everything that would stop the build on this machine, at once. */
async function openBuild(configPath: string, settings: BuildSettings, out: Output): Promise<OpenedBuild> {
  const engine = checkUsage(settings);
  const { request } = settings;
  const compress = parseCompression(settings.compress);
  const opened = openConfig(configPath, out, settings.state);
  const outDir = path.resolve(settings.out ?? "deploy");
  refuseProtectedOutput(outDir, "--out", protectedPaths(opened.model, opened.state.dir, engine.inputs(request)));
  const problems = problemsOf(await buildRequirements(engine, request, opened.model, compress));
  if (problems.length > 0) throw problemsError(problems, cannotRunHeading(engine.describe(request)));
  try {
    mkdirOwned(outDir);
  } catch (err) {
    throw new PibakeError(`cannot create the output directory ${outDir}: ${(err as Error).message}`);
  }
  await recoverStale(outDir, out);
  for (const w of (await engine.warnings?.(request, outDir)) ?? []) out.warn(w);
  const workDir = path.join(outDir, `.pibake-work-${process.pid}`);
  return { ...opened, configPath, settings, engine, request, out, compress, outDir, workDir, logPath: path.join(workDir, "build.log"), started: Date.now() };
}

async function renderStep(b: OpenedBuild, scope: CleanupScope, steps: Steps): Promise<Prepared> {
  steps.begin("render");
  const prepared = await prepareAndRender(b.model, b.state, { signal: scope.signal, onVersions: (m) => steps.status(`Node-RED: ${m}`) });
  const { pki } = prepared.secrets;
  steps.status(`certificate for ${b.model.tls.domain}: ${pki.serverCertStatus}; CA ${pki.caCreated ? "created" : "reused"} in ${b.state.dir}`);
  scope.throwIfInterrupted();
  return prepared;
}

async function deliverStep(b: OpenedBuild, result: EngineResult, prepared: Prepared, scope: CleanupScope, steps: Steps, log: BuildLog): Promise<Delivered> {
  steps.begin("deliver");
  const baseName = deliveryBaseName(b.model, new Date());
  const delivered = await deliver({
    result,
    outDir: b.outDir,
    baseName,
    compress: b.compress,
    logPath: b.logPath,
    facts: buildFacts(b.model, prepared.secrets, prepared.rendered, b.state),
    extraFiles: [{ name: CA_FILE, content: prepared.secrets.pki.caCertPem }],
    signal: scope.signal,
    timings: { ...steps.timings },
    onStatus: (phase, message) => steps.status(`${phase}: ${message}`),
  });
  steps.end();
  log.line(`delivered ${delivered.image}`);
  rmSync(path.join(b.outDir, `${baseName}.failed.log`), { force: true });
  return delivered;
}
