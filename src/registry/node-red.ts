import { execFileSync } from "node:child_process";
import type { Release } from "../config/model.js";
import type { StateDir } from "../secrets/state.js";

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

const SEMVER_RE = /^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$/;

type Triple = [number, number, number];

function parse(version: string): { v: Triple; pre?: string } | undefined {
  const m = SEMVER_RE.exec(version.trim());
  if (!m) return undefined;
  return { v: [Number(m[1]), Number(m[2]), Number(m[3])], ...(m[4] ? { pre: m[4] } : {}) };
}

function cmp(a: Triple, b: Triple): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  return 0;
}

/** A partial version ("18", "18.5", "18.x", "*"): the numbers given and how many. */
function partial(text: string): { v: Triple; given: number } | undefined {
  const t = text.replace(/^v/, "").replace(/-.*$/, "");
  if (t === "" || t === "*" || t === "x" || t === "X") return { v: [0, 0, 0], given: 0 };
  const parts = t.split(".");
  if (parts.length > 3) return undefined;
  const nums: number[] = [];
  for (const p of parts) {
    if (p === "x" || p === "X" || p === "*") break;
    if (!/^\d+$/.test(p)) return undefined;
    nums.push(Number(p));
  }
  return { v: [nums[0] ?? 0, nums[1] ?? 0, nums[2] ?? 0], given: nums.length };
}

/** The exclusive upper bound of a partial version: 18 → 19.0.0, 18.5 → 18.6.0. */
function bumpPartial(p: { v: Triple; given: number }): Triple | undefined {
  if (p.given === 0) return undefined;
  if (p.given === 1) return [p.v[0] + 1, 0, 0];
  if (p.given === 2) return [p.v[0], p.v[1] + 1, 0];
  return undefined;
}

type Test = (v: Triple) => boolean;

function comparator(token: string): Test[] | undefined {
  const m = /^(>=|<=|>|<|=|\^|~)?\s*(.*)$/.exec(token);
  if (!m) return undefined;
  const op = m[1] ?? "";
  const p = partial(m[2]!);
  if (!p) return undefined;
  const lo = p.v;
  const upper = bumpPartial(p);
  switch (op) {
    case ">=":
      return [(v) => cmp(v, lo) >= 0];
    case ">":
      return upper ? [(v) => cmp(v, upper) >= 0] : p.given === 0 ? [() => false] : [(v) => cmp(v, lo) > 0];
    case "<":
      return p.given === 0 ? [() => false] : [(v) => cmp(v, lo) < 0];
    case "<=":
      return upper ? [(v) => cmp(v, upper) < 0] : p.given === 0 ? [() => true] : [(v) => cmp(v, lo) <= 0];
    case "^": {
      if (p.given === 0) return [() => true];
      const [a, b, c] = lo;
      const hi: Triple = a > 0 || p.given === 1 ? [a + 1, 0, 0] : b > 0 || p.given === 2 ? [0, b + 1, 0] : [0, 0, c + 1];
      return [(v) => cmp(v, lo) >= 0, (v) => cmp(v, hi) < 0];
    }
    case "~": {
      if (p.given === 0) return [() => true];
      const hi: Triple = p.given === 1 ? [lo[0] + 1, 0, 0] : [lo[0], lo[1] + 1, 0];
      return [(v) => cmp(v, lo) >= 0, (v) => cmp(v, hi) < 0];
    }
    default: {
      if (p.given === 0) return [() => true];
      if (upper) return [(v) => cmp(v, lo) >= 0, (v) => cmp(v, upper) < 0];
      return [(v) => cmp(v, lo) === 0];
    }
  }
}

/**
 * Whether a (release) version satisfies an npm range, for the range forms
 * that `engines` fields use: comparators (>=, >, <=, <, =), ^, ~, x-ranges,
 * hyphen ranges and `||`. A range it cannot read counts as not satisfied.
 */
export function satisfies(version: string, range: string): boolean {
  const parsed = parse(version);
  if (!parsed || parsed.pre) return false;
  const r = range.trim();
  if (r === "" || r === "*") return true;
  return r.split("||").some((alt) => {
    const text = alt.trim().replace(/(>=|<=|>|<|=|\^|~)\s+/g, "$1");
    const hyphen = /^(\S+)\s+-\s+(\S+)$/.exec(text);
    let tests: Test[] = [];
    if (hyphen) {
      const lo = partial(hyphen[1]!);
      const hi = partial(hyphen[2]!);
      if (!lo || !hi) return false;
      const hiBound = bumpPartial(hi);
      tests = [(v) => cmp(v, lo.v) >= 0, hiBound ? (v) => cmp(v, hiBound) < 0 : (v) => cmp(v, hi.v) <= 0];
    } else {
      for (const token of text.split(/\s+/).filter(Boolean)) {
        const t = comparator(token);
        if (!t) return false;
        tests.push(...t);
      }
    }
    return tests.every((t) => t(parsed.v));
  });
}

/**
 * The newest release (no pre-releases) whose engines.node accepts `nodeVersion`
 * and, for a Node-RED module that states it, whose node-red.version accepts
 * `nodeRedVersion`. A release that states no Node range is passed over:
 * nothing says it runs.
 */
export function chooseVersion(infos: VersionInfo[], nodeVersion: string, nodeRedVersion?: string): string | undefined {
  let best: { version: string; v: Triple } | undefined;
  for (const info of infos) {
    const p = parse(info.version);
    if (!p || p.pre) continue;
    const range = info.engines?.node;
    if (typeof range !== "string" || !satisfies(nodeVersion, range)) continue;
    const nodeRedRange = info["node-red.version"];
    if (nodeRedVersion && typeof nodeRedRange === "string" && !satisfies(nodeRedVersion, nodeRedRange)) continue;
    if (!best || cmp(p.v, best.v) > 0) best = { version: info.version, v: p.v };
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
export type RegistryLookup = (pkg: string) => VersionInfo[];

export const npmView: RegistryLookup = (pkg) => {
  const out = execFileSync("npm", ["view", `${pkg}@>=0.0.0`, "version", "engines", "node-red.version", "--json"], {
    encoding: "utf8",
    timeout: 60_000,
    stdio: ["ignore", "pipe", "ignore"],
    env: { ...process.env, npm_config_update_notifier: "false" },
  });
  return parseNpmView(out);
};

export const DASHBOARD_PACKAGES = { flowfuse: "@flowfuse/node-red-dashboard", classic: "node-red-dashboard", none: undefined } as const;

export interface VersionRequest {
  release: Release;
  /** The dashboard package, or undefined for none. */
  dashboard?: string;
  /** An exact Node-RED version from the config (nodeRed.version). */
  pinned?: string;
}

const STATE_FILE = "node-red-versions.json";

/**
 * The versions to install: those recorded in the state directory when they
 * were chosen for the same release and dashboard (and, if the config pins
 * one, the same Node-RED), else chosen now from the registry, else the
 * pinned fallback. The result is recorded, so that renders repeat.
 */
export function resolveNodeRedVersions(
  state: StateDir,
  req: VersionRequest,
  lookup: RegistryLookup = npmView,
  offline = process.env.PIBAKE_OFFLINE === "1",
): NodeRedVersions {
  const node = OS_NODE[req.release];
  const recorded = state.readJson<NodeRedVersions>(STATE_FILE);
  if (
    recorded &&
    recorded.release === req.release &&
    recorded.node === node &&
    recorded.dashboard?.package === req.dashboard &&
    (req.pinned === undefined ? recorded.nodeRed.source !== "config" : recorded.nodeRed.version === req.pinned)
  ) {
    return recorded;
  }
  const pick = (pkg: string, nodeRedVersion?: string): PackageChoice => {
    if (!offline) {
      try {
        const chosen = chooseVersion(lookup(pkg), node, nodeRedVersion);
        if (chosen) return { package: pkg, version: chosen, source: "registry" };
      } catch {
        // No npm, no network, or an answer that is not JSON: the pinned release stands in.
      }
    }
    return { package: pkg, version: PINNED[pkg]!, source: "fallback" };
  };
  const nodeRed: PackageChoice = req.pinned ? { package: "node-red", version: req.pinned, source: "config" } : pick("node-red");
  const versions: NodeRedVersions = {
    release: req.release,
    node,
    nodeRed,
    ...(req.dashboard ? { dashboard: pick(req.dashboard, nodeRed.version) } : {}),
  };
  state.writeJson(STATE_FILE, versions);
  return versions;
}
