import { createHash } from "node:crypto";
import { answerRecords } from "../host/answer.js";
import type { OverlayFile } from "../render/overlay.js";

/**
 * What `pibake push` compares and decides, without I/O: the Pi's state as
 * the inspect script printed it, the render, and from both the files to add,
 * change and remove, the services to restart, and what cannot change in
 * place.
 */

/** A file on the Pi as the inspect script saw it: never its content. */
export interface RemoteFile {
  sha256: string;
  mode: number;
  owner: string;
  group: string;
  size: number;
}

/** What a push or a build recorded on the Pi (only the fields push reads). */
export interface PiRecord {
  overlay?: string[];
  domain?: string;
  tlsPort?: number;
}

export interface PiState {
  release: string;
  arch: string;
  packages: Set<string>;
  /** By overlay path; absent: no such file; "other": a directory, link or device there. */
  files: Map<string, RemoteFile | "other">;
  build?: PiRecord;
  push?: PiRecord;
}

/** Parses the inspect script's output (stages/push/inspect.sh); throws when it is cut short or malformed. */
export function parseInspect(output: string): PiState {
  const state: PiState = { release: "", arch: "", packages: new Set(), files: new Map() };
  const { records, ended } = answerRecords(output);
  for (const [kind, f] of records) {
    switch (kind) {
      case "release":
        state.release = f[0] ?? "";
        break;
      case "arch":
        state.arch = f[0] ?? "";
        break;
      case "package":
        if (f[0]) state.packages.add(f[0]);
        break;
      case "build-record":
      case "push-record": {
        const record = parseRecord(Buffer.from(f[0] ?? "", "base64").toString("utf8"));
        if (record) state[kind === "build-record" ? "build" : "push"] = record;
        break;
      }
      case "file": {
        const [path, sha256, mode, owner, group, size] = f;
        if (!path || !/^[0-9a-f]{64}$/.test(sha256 ?? "") || !/^[0-7]{1,4}$/.test(mode ?? "") || !owner || !group || !/^\d+$/.test(size ?? ""))
          throw new Error(`the Pi's answer has a malformed line: ${[kind, ...f].join("\t").slice(0, 200)}`);
        state.files.set(path, { sha256: sha256!, mode: parseInt(mode!, 8), owner, group, size: Number(size) });
        break;
      }
      case "other":
        if (f[0]) state.files.set(f[0], "other");
        break;
      case "missing":
        break;
      default:
        // sudo or a login banner may add lines of their own: ignore them.
        break;
    }
  }
  if (!ended || !state.release || !state.arch) throw new Error("the Pi's answer was cut short (no release, architecture or end line)");
  return state;
}

function parseRecord(text: string): PiRecord | undefined {
  try {
    const j = JSON.parse(text) as Record<string, unknown>;
    const record: PiRecord = {};
    if (Array.isArray(j.overlay) && j.overlay.every((p) => typeof p === "string")) record.overlay = j.overlay as string[];
    if (typeof j.domain === "string") record.domain = j.domain;
    if (typeof j.tlsPort === "number") record.tlsPort = j.tlsPort;
    return record;
  } catch {
    return undefined;
  }
}

export type Change =
  | { path: string; kind: "add" | "change"; size: number; what: string[] }
  | { path: string; kind: "remove"; size: number | undefined; what: string[] };

export interface Refusal {
  what: string;
  reason: string;
}

export interface PushPlan {
  changes: Change[];
  unchanged: string[];
  refusals: Refusal[];
  /** For the apply script, in order: `daemon-reload`, or a systemctl verb and a unit. */
  actions: string[];
  /** The files the tar carries: those added or changed. */
  files: OverlayFile[];
  removed: string[];
}

export interface PlanInput {
  overlay: OverlayFile[];
  pi: PiState;
  release: string;
  arch: string;
  /** Every package the rendered stage installs (stagePackages in src/render/stage.ts). */
  packages: string[];
  allowNetworkChange: boolean;
}

/** Where the static address and the Wi-Fi live: a mistake there loses the Pi, so it changes only when asked. */
export function isNetworkProfile(p: string): boolean {
  return p.startsWith("etc/NetworkManager/system-connections/");
}

function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

export function planPush(input: PlanInput): PushPlan {
  const { overlay, pi } = input;
  const changes: Change[] = [];
  const unchanged: string[] = [];
  const files: OverlayFile[] = [];
  for (const f of overlay) {
    const now = pi.files.get(f.path);
    if (now === undefined || now === "other") {
      changes.push({ path: f.path, kind: "add", size: f.content.length, what: now === "other" ? ["replaces what is not a regular file"] : [] });
      files.push(f);
      continue;
    }
    const what: string[] = [];
    if (now.sha256 !== sha256(f.content)) what.push(`content (${now.size} → ${f.content.length} bytes)`);
    if (now.mode !== f.mode) what.push(`mode ${now.mode.toString(8).padStart(4, "0")} → ${f.mode.toString(8).padStart(4, "0")}`);
    if (now.owner !== f.owner || now.group !== f.group) what.push(`owner ${now.owner}:${now.group} → ${f.owner}:${f.group}`);
    if (what.length) {
      changes.push({ path: f.path, kind: "change", size: f.content.length, what });
      files.push(f);
    } else unchanged.push(f.path);
  }
  // The last push knows best what the Pi runs; before any push, the image's build marker.
  const previous = pi.push?.overlay ?? pi.build?.overlay ?? [];
  const wanted = new Set(overlay.map((f) => f.path));
  // Named by the record, removed if present: the apply script's rm -f takes what is not there.
  const removed = [...new Set(previous)].filter((p) => !wanted.has(p)).sort();
  for (const p of removed) {
    const now = pi.files.get(p);
    changes.push({ path: p, kind: "remove", size: now && now !== "other" ? now.size : undefined, what: [] });
  }
  changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { changes, unchanged, refusals: refusals(input, changes), actions: actionsFor(changes.map((c) => c.path)), files, removed };
}

/** What cannot change on a running Pi: each needs a new image. */
export function refusals(input: PlanInput, changes: Change[]): Refusal[] {
  const out: Refusal[] = [];
  if (input.pi.release !== input.release) out.push({ what: "release", reason: `the Pi runs ${input.pi.release}, the config says ${input.release}` });
  if (input.pi.arch !== input.arch) out.push({ what: "architecture", reason: `the Pi runs ${input.pi.arch}, the config says ${input.arch}` });
  const missing = input.packages.filter((p) => !input.pi.packages.has(p.replace(/[:=].*$/, "")));
  if (missing.length) out.push({ what: "packages", reason: `the config needs packages the Pi does not have: ${missing.join(", ")}` });
  const network = changes.filter((c) => isNetworkProfile(c.path));
  if (network.length && !input.allowNetworkChange) {
    out.push({
      what: "network",
      reason: `the network profile would change (${network.map((c) => `/${c.path}`).join(", ")}): a mistake there loses the Pi; pass --allow-network-change to push it anyway`,
    });
  }
  return out;
}

/**
 * Which services read which files: each changed file's service is restarted
 * (or reloaded) once, after a daemon-reload when a unit file changed.
 * Mosquitto is restarted rather than reloaded: a new certificate or listener
 * needs it, and its persistence keeps retained messages across the restart.
 */
const SERVICES: { match: (p: string) => boolean; action: string }[] = [
  {
    match: (p) =>
      p.startsWith("etc/mosquitto/") || p === "usr/local/lib/pibake/mosquitto-db-check.sh" || p.startsWith("etc/systemd/system/mosquitto.service.d/"),
    action: "restart mosquitto",
  },
  { match: (p) => p === "etc/ddclient.conf" || p === "etc/default/ddclient", action: "try-restart ddclient" },
  { match: (p) => /(^|\/)\.node-red\//.test(p) || p === "etc/systemd/system/nodered.service", action: "try-restart nodered" },
  { match: (p) => p === "etc/nftables.conf", action: "try-reload-or-restart nftables" },
  { match: (p) => p.startsWith("etc/fail2ban/"), action: "try-reload-or-restart fail2ban" },
  { match: (p) => p.startsWith("etc/systemd/journald.conf.d/"), action: "try-restart systemd-journald" },
  { match: (p) => p.startsWith("etc/ssh/sshd_config.d/"), action: "try-reload-or-restart ssh" },
  { match: (p) => p.startsWith("etc/systemd/system/pibake-status."), action: "try-restart pibake-status.timer" },
  { match: (p) => p.startsWith("etc/systemd/system/pibake-acme."), action: "try-restart pibake-acme.timer" },
  { match: isNetworkProfile, action: "nmcli-reload" },
];

export function actionsFor(paths: string[]): string[] {
  const actions: string[] = [];
  if (paths.some((p) => p.startsWith("etc/systemd/system/"))) actions.push("daemon-reload");
  for (const s of SERVICES) if (paths.some(s.match) && !actions.includes(s.action)) actions.push(s.action);
  return actions;
}

/** Files whose content is a secret: the plan names them and their sizes, never more. */
export function describeChange(c: Change): string {
  const sign = c.kind === "add" ? "+" : c.kind === "remove" ? "-" : "~";
  const size = c.size === undefined ? "" : ` (${c.size} bytes)`;
  return `${sign} /${c.path}${c.kind === "change" ? `: ${c.what.join(", ")}` : size}${c.kind === "add" && c.what.length ? `, ${c.what.join(", ")}` : ""}`;
}
