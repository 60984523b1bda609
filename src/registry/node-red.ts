import { createRequire } from "node:module";
import type { Model, Release } from "../config/model.js";
import type { Command } from "../host/process.js";

/**
 * Which Node-RED (and dashboard) release the image installs. The Pi runs the
 * OS's own Node.js (Debian's nodejs package), so the newest release whose
 * `engines.node` accepts that Node is chosen, asking the npm registry once;
 * the choice is kept in the state directory so that later renders repeat it
 * byte for byte, and without the registry (offline, PIBAKE_OFFLINE=1) a
 * pinned, known-good release stands in.
 */

/** The Node.js that each release's archive ships (Debian's nodejs package; Raspberry Pi OS does not replace it). */
export const OS_NODE: Record<Release, string> = {
  bookworm: "18.20.4",
  trixie: "20.19.2",
};

/**
 * Releases known to run on both OS Node versions above, used when the
 * registry cannot be asked. Node-RED 5 needs Node 22.9, which neither ships.
 */
export const PINNED: Record<string, string> = {
  "node-red": "4.1.15",
  "@flowfuse/node-red-dashboard": "1.31.0",
  "node-red-dashboard": "3.6.6",
};

/**
 * The npm the Pi installs Node-RED with: npm's own release (one tarball with
 * its dependencies bundled), pinned with its integrity, instead of Debian's npm
 * package and its ~380 node-* packages. 10.9 is the newest line whose engines
 * take both releases' Node (npm 11 needs Node 20.17).
 */
export const NPM_RELEASE = {
  version: "10.9.9",
  tarball: "https://registry.npmjs.org/npm/-/npm-10.9.9.tgz",
  integrity: "sha512-1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==",
} as const;

export interface VersionInfo {
  version: string;
  engines?: { node?: string };
  /** A Node-RED module's own field: the Node-RED versions it works with. */
  "node-red.version"?: string;
}

export type VersionSource = "registry" | "fallback" | "config";

export interface PackageChoice {
  package: string;
  version: string;
  source: VersionSource;
}

/** What the state directory keeps (node-red-versions.json) and the manifest records. */
export interface NodeRedVersions {
  release: Release;
  /** The OS's Node.js version the choice was checked against. */
  node: string;
  nodeRed: PackageChoice;
  dashboard?: PackageChoice;
}

/**
 * semver's functions, loaded at first use: a render that repeats the versions
 * recorded in the state directory compares none and need not load them.
 */
interface Semver {
  satisfies: typeof import("semver/functions/satisfies.js");
  valid: typeof import("semver/functions/valid.js");
  prerelease: typeof import("semver/functions/prerelease.js");
  gt: typeof import("semver/functions/gt.js");
}
let loaded: Semver | undefined;
function semver(): Semver {
  if (!loaded) {
    const require = createRequire(import.meta.url);
    loaded = {
      satisfies: require("semver/functions/satisfies") as Semver["satisfies"],
      valid: require("semver/functions/valid") as Semver["valid"],
      prerelease: require("semver/functions/prerelease") as Semver["prerelease"],
      gt: require("semver/functions/gt") as Semver["gt"],
    };
  }
  return loaded;
}

/** A release version: valid semver (a leading "v" allowed) and no pre-release. */
function release(version: string): string | undefined {
  const { valid, prerelease } = semver();
  const v = valid(version);
  return v && !prerelease(v) ? v : undefined;
}

/**
 * Whether a release version satisfies an npm range (npm's own rules, through
 * the semver package). A pre-release never does, and a range that cannot be
 * read counts as not satisfied.
 */
export function satisfies(version: string, range: string): boolean {
  const v = release(version);
  return v !== undefined && semver().satisfies(v, range);
}

/**
 * The newest release (no pre-releases) whose engines.node accepts `nodeVersion`
 * and, for a Node-RED module that states it, whose node-red.version accepts
 * `nodeRedVersion`. A release that states no Node range is passed over:
 * nothing says it runs.
 */
export function chooseVersion(infos: VersionInfo[], nodeVersion: string, nodeRedVersion?: string): string | undefined {
  let best: { version: string; v: string } | undefined;
  for (const info of infos) {
    const v = release(info.version);
    if (!v) continue;
    const range = info.engines?.node;
    if (typeof range !== "string" || !satisfies(nodeVersion, range)) continue;
    const nodeRedRange = info["node-red.version"];
    if (nodeRedVersion && typeof nodeRedRange === "string" && !satisfies(nodeRedVersion, nodeRedRange)) continue;
    if (!best || semver().gt(v, best.v)) best = { version: info.version, v };
  }
  return best?.version;
}

/** `npm view PACKAGE@>=0.0.0 version engines node-red.version --json` prints one object, or a list when several releases match (`@*` would mean only the latest). */
export function parseNpmView(json: string): VersionInfo[] {
  const data = JSON.parse(json) as unknown;
  const list = Array.isArray(data) ? data : [data];
  return list.filter((x): x is VersionInfo => typeof x === "object" && x !== null && typeof (x as VersionInfo).version === "string");
}

/** Asks the registry through the user's own npm, so that its registry and proxy settings apply. */
export type RegistryLookup = (pkg: string, signal?: AbortSignal) => VersionInfo[] | Promise<VersionInfo[]>;

/**
 * How long a render waits for the registry, all look-ups together. npm's own
 * defaults (two retries with back-off, a 5-minute fetch timeout) kept a render
 * silent for about 2 minutes when the registry did not answer.
 */
export const REGISTRY_WAIT_MS = 10_000;

/** Every published version of `pkg` with its engines and node-red.version, as JSON; one try, within REGISTRY_WAIT_MS; no update notice. */
export const npmViewCommand = (pkg: string): Command => ({
  cmd: "npm",
  args: ["view", `${pkg}@>=0.0.0`, "version", "engines", "node-red.version", "--json", "--fetch-retries=0", `--fetch-timeout=${REGISTRY_WAIT_MS}`],
  what: `asking the npm registry for ${pkg}`,
  env: { npm_config_update_notifier: "false" },
});

/**
 * The registry's versions of a package, through npm (its proxy and registry settings, npm_config_registry too): one try, bounded.
 * Under sudo it runs as the user behind it, with their HOME: `sudo -E` keeps HOME, and npm run
 * as root there left root-owned files in their ~/.npm, after which their own npm (`npm ci`,
 * `npm view`) failed on its cache.
 */
export const npmView: RegistryLookup = async (pkg, signal) => {
  // Loaded here: a render that repeats the recorded versions runs no program.
  const { runCommand } = await import("../host/process.js");
  const { asInvoker } = await import("../host/sudo.js");
  const user = asInvoker();
  const r = await runCommand(npmViewCommand(pkg), { timeout: REGISTRY_WAIT_MS, ...(user ? { env: user.env } : {}), as: user, signal });
  return parseNpmView(r.stdout);
};

export const DASHBOARD_PACKAGES = { flowfuse: "@flowfuse/node-red-dashboard", classic: "node-red-dashboard", none: undefined } as const;

export interface VersionRequest {
  release: Release;
  /** The dashboard package, or undefined for none. */
  dashboard?: string | undefined;
  /** An exact Node-RED version from the config (nodeRed.version). */
  pinned?: string;
}

/** What Node-RED's versions are chosen for: the release's Node.js, the dashboard, a pinned Node-RED. */
export function nodeRedVersionRequest(model: Model): VersionRequest | undefined {
  const nr = model.nodeRed;
  if (!nr) return undefined;
  return { release: model.image.release, dashboard: DASHBOARD_PACKAGES[nr.dashboard], ...(nr.version ? { pinned: nr.version } : {}) };
}

const STATE_FILE = "node-red-versions.json";

/**
 * Where the choice is recorded: the state directory (secrets' StateDir has
 * these two methods). Only this much is asked for, so that the registry does
 * not depend on the secrets that use it.
 */
export interface VersionRecordStore {
  readJson<T>(name: string): T | undefined;
  writeJson(name: string, value: unknown): void;
}

/** The versions recorded in the state directory, when they were chosen for this request (release, dashboard, pinned Node-RED). */
function recordedFor(state: VersionRecordStore, req: VersionRequest): NodeRedVersions | undefined {
  const recorded = state.readJson<NodeRedVersions>(STATE_FILE);
  if (
    recorded &&
    recorded.release === req.release &&
    recorded.node === OS_NODE[req.release] &&
    recorded.dashboard?.package === req.dashboard &&
    (req.pinned === undefined ? recorded.nodeRed.source !== "config" : recorded.nodeRed.version === req.pinned) &&
    // Older pibake recorded the fallback too: asked again, as if nothing were recorded.
    ![recorded.nodeRed, recorded.dashboard].some((c) => c?.source === "fallback")
  ) {
    return recorded;
  }
  return undefined;
}

/** The choice made without the registry: the config's pin, else the known-good releases. */
function fallbackVersions(req: VersionRequest): NodeRedVersions {
  const fallback = (pkg: string): PackageChoice => ({ package: pkg, version: PINNED[pkg]!, source: "fallback" });
  return {
    release: req.release,
    node: OS_NODE[req.release],
    nodeRed: req.pinned ? { package: "node-red", version: req.pinned, source: "config" } : fallback("node-red"),
    ...(req.dashboard ? { dashboard: fallback(req.dashboard) } : {}),
  };
}

/**
 * What a render installs, with no network: the versions recorded by the
 * last resolve for the same request, else the fallback (never recorded, so
 * that the next resolve still asks the registry).
 */
export function recordedNodeRedVersions(state: VersionRecordStore, req: VersionRequest): NodeRedVersions {
  return recordedFor(state, req) ?? fallbackVersions(req);
}

export interface ResolveOptions {
  lookup?: RegistryLookup;
  /** Default: PIBAKE_OFFLINE=1. */
  offline?: boolean;
  /** Ctrl-C: stops the look-up and the render. */
  signal?: AbortSignal;
  /** Said before a look-up, since it may take up to `waitMs`. */
  onAsking?: (pkg: string, waitMs: number) => void;
  /** Default REGISTRY_WAIT_MS, for every look-up together. */
  waitMs?: number;
}

export interface Resolved {
  versions: NodeRedVersions;
  asked: boolean;
  /** Why the registry gave no answer, when the fallback stands in for it. */
  failure?: string;
}

/** The gist of a failed look-up: npm's error code, else its first line. */
function whyFailed(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const code = /\b(E[A-Z0-9_]{3,})\b/.exec(text)?.[1];
  return (
    code ??
    text
      .split("\n")
      .find((l) => l.trim())
      ?.trim()
      .slice(0, 200) ??
    "no answer"
  );
}

/**
 * The versions to install, chosen before a render: those recorded in the
 * state directory when they were chosen for the same release and dashboard
 * (and, if the config pins one, the same Node-RED), else chosen now from
 * the registry, else the pinned fallback. A choice the registry made is
 * recorded, so that renders repeat; the fallback is not, so that the next
 * render with a registry that answers asks again. The registry gets
 * `waitMs` in all, and once it failed it is not asked for the dashboard.
 */
export async function resolveNodeRedVersions(state: VersionRecordStore, req: VersionRequest, opts: ResolveOptions = {}): Promise<Resolved> {
  const recorded = recordedFor(state, req);
  if (recorded) return { versions: recorded, asked: false };
  const { lookup = npmView, offline = process.env.PIBAKE_OFFLINE === "1", signal, onAsking, waitMs = REGISTRY_WAIT_MS } = opts;
  const node = OS_NODE[req.release];
  const fallback = fallbackVersions(req);
  const deadline = AbortSignal.timeout(waitMs);
  const bounded = signal ? AbortSignal.any([signal, deadline]) : deadline;
  let failure: string | undefined;
  const pick = async (pkg: string, stand: PackageChoice, nodeRedVersion?: string): Promise<PackageChoice> => {
    if (offline || failure !== undefined) return stand;
    onAsking?.(pkg, waitMs);
    try {
      // Raced against the deadline too: a look-up that ignores its signal still ends the wait.
      const infos = await new Promise<VersionInfo[]>((resolve, reject) => {
        const stop = () => reject(bounded.reason);
        if (bounded.aborted) return stop();
        bounded.addEventListener("abort", stop, { once: true });
        Promise.resolve()
          .then(() => lookup(pkg, bounded))
          .then(resolve, reject)
          .finally(() => bounded.removeEventListener("abort", stop));
      });
      const chosen = chooseVersion(infos, node, nodeRedVersion);
      if (chosen) return { package: pkg, version: chosen, source: "registry" };
      failure = `no release of ${pkg} in its answer runs on Node.js ${node}`;
    } catch (err) {
      signal?.throwIfAborted();
      // No npm, no network, or an answer that is not JSON: the pinned release stands in.
      failure = deadline.aborted ? `no answer within ${(waitMs / 1000).toFixed(0)} s` : whyFailed(err);
    }
    return stand;
  };
  const nodeRed = req.pinned ? fallback.nodeRed : await pick("node-red", fallback.nodeRed);
  const versions: NodeRedVersions = {
    release: req.release,
    node,
    nodeRed,
    ...(req.dashboard ? { dashboard: await pick(req.dashboard, fallback.dashboard!, nodeRed.version) } : {}),
  };
  if (![versions.nodeRed, versions.dashboard].some((c) => c?.source === "fallback")) state.writeJson(STATE_FILE, versions);
  return { versions, asked: !offline, ...(failure !== undefined ? { failure } : {}) };
}
