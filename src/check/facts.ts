import { answerRecords } from "../host/answer.js";
import { failed, ok, warning, type CheckResult } from "./result.js";

/**
 * What `pibake check --ssh` learns from the Pi itself (stages/check/facts.sh,
 * run as the first user) and how it judges it: failed units, mosquitto's
 * uptime, ddclient's last update, disk and memory headroom, the pibake-status
 * report. Pure, so that every verdict is tested from text.
 */

export interface UnitState {
  loadState: string;
  activeState: string;
  /** "auto-restart" while systemd waits to run a failed unit again. */
  subState: string;
  /** Monotonic microseconds at which the unit last became active; 0 when never. */
  activeEnterUs: number;
  restarts: number;
}

export interface PiFacts {
  uptimeSeconds: number;
  /** Undefined when systemctl could not be asked. */
  failedUnits: string[] | undefined;
  units: Map<string, UnitState>;
  /** ddclient's cache entry for the domain: its key=value fields; "none" without a cache file, "missing" without an entry. */
  ddclientCache: Record<string, string> | "none" | "missing" | undefined;
  disks: { mount: string; size: number; available: number }[];
  memory: { total: number; available: number } | undefined;
  status: { writtenAt: number; text: string } | undefined;
  /** tls.mode "acme": pibake-acme.timer's state and /var/lib/pibake/acme.status (key=value lines). */
  acme: { timer: string; status: Record<string, string> | undefined } | undefined;
  /** /var/lib/pibake/firstboot.done: when the first boot finished installing Node-RED. */
  firstBootDone: string | undefined;
  /** /var/lib/pibake/push.json: what the last push put there. */
  pushed: { at: string; digest: string } | undefined;
  now: number;
  errors: string[];
}

export function parseFacts(output: string): PiFacts {
  const facts: PiFacts = {
    uptimeSeconds: NaN,
    failedUnits: undefined,
    units: new Map(),
    ddclientCache: undefined,
    disks: [],
    memory: undefined,
    status: undefined,
    acme: undefined,
    firstBootDone: undefined,
    pushed: undefined,
    now: NaN,
    errors: [],
  };
  const failedUnits: string[] = [];
  const { records, ended } = answerRecords(output);
  for (const [kind, f] of records) {
    switch (kind) {
      case "uptime":
        facts.uptimeSeconds = Number(f[0]);
        break;
      case "failed-unit":
        if (f[0]) failedUnits.push(f[0]);
        break;
      case "failed-units-read":
        facts.failedUnits = failedUnits;
        break;
      case "unit":
        facts.units.set(f[0] ?? "", unitState(f.slice(1)));
        break;
      case "ddclient-cache":
        facts.ddclientCache = ddclientCache(f[0]);
        break;
      case "disk":
        if (f[0]) facts.disks.push({ mount: f[0], size: Number(f[1]), available: Number(f[2]) });
        break;
      case "memory":
        facts.memory = { total: Number(f[0]), available: Number(f[1]) };
        break;
      case "status":
        facts.status = { writtenAt: Number(f[0]), text: Buffer.from(f[1] ?? "", "base64").toString("utf8") };
        break;
      case "acme-timer":
        facts.acme = { timer: f[0] ?? "", status: facts.acme?.status };
        break;
      case "acme-status":
        facts.acme = { timer: facts.acme?.timer ?? "", status: acmeStatus(f[0]) };
        break;
      case "firstboot-done":
        facts.firstBootDone = f[0] ?? "";
        break;
      case "push-record": {
        const pushed = pushRecord(f[0]);
        if (pushed) facts.pushed = pushed;
        break;
      }
      case "now":
        facts.now = Number(f[0]);
        break;
      case "error":
        facts.errors.push(`${f[0]}: ${f[1] ?? ""}`.trim());
        break;
      default:
        // A login banner or a shell's own lines: not ours.
        break;
    }
  }
  if (!ended || !Number.isFinite(facts.now)) throw new Error("the Pi's answer was cut short (no end line)");
  return facts;
}

/** A unit's `systemctl show` properties (NAME=value). */
function unitState(props: string[]): UnitState {
  const p = new Map(props.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)] as const));
  return {
    loadState: p.get("LoadState") ?? "",
    activeState: p.get("ActiveState") ?? "",
    subState: p.get("SubState") ?? "",
    activeEnterUs: Number(p.get("ActiveEnterTimestampMonotonic") ?? 0) || 0,
    restarts: Number(p.get("NRestarts") ?? 0) || 0,
  };
}

/** ddclient's cache entry as facts.sh gives it: "none", "-" (or nothing) for no entry, else key=value pairs joined by commas. */
function ddclientCache(field: string | undefined): PiFacts["ddclientCache"] {
  if (field === "none") return "none";
  if (!field || field === "-") return "missing";
  return Object.fromEntries(field.split(",").map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

/** acme.status, base64: its key=value lines. */
function acmeStatus(field: string | undefined): Record<string, string> {
  const lines = Buffer.from(field ?? "", "base64")
    .toString("utf8")
    .split("\n")
    .filter((l) => l.includes("="));
  return Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

/** push.json, base64: when, and which config; undefined when it says neither. */
function pushRecord(field: string | undefined): PiFacts["pushed"] {
  try {
    const r = JSON.parse(Buffer.from(field ?? "", "base64").toString("utf8")) as { pushedAt?: unknown; config?: { digest?: unknown } };
    if (typeof r.pushedAt === "string" && typeof r.config?.digest === "string") return { at: r.pushedAt, digest: r.config.digest };
  } catch {
    // A record pibake cannot read tells nothing.
  }
  return undefined;
}

const MiB = 1024 * 1024;

function size(bytes: number): string {
  return bytes >= 1024 * MiB ? `${(bytes / (1024 * MiB)).toFixed(1)} GiB` : `${Math.round(bytes / MiB)} MiB`;
}

function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172_800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86_400)} days`;
}

function isoOf(epochSeconds: number): string {
  return new Date(epochSeconds * 1000).toISOString().replace(/\.000Z$/, "Z");
}

export interface JudgeOptions {
  where: string;
  /** ddns.hostname; undefined without ddns. */
  ddnsHostname: string | undefined;
  configDigest?: string;
  pushCommand?: string;
  /** tls.mode is "acme". */
  acme?: boolean;
  /** Node-RED is on: its first-boot install is judged. */
  nodeRed?: boolean;
}

type OnPi = (cmd: string) => string;

/** What each fact means for the broker: a line each, with what to do. */
export function judgeFacts(facts: PiFacts, opts: JudgeOptions): CheckResult[] {
  const onPi = (cmd: string) => `on the Pi: ${cmd}`;
  return [
    judgeFailedUnits(facts, opts.where, onPi),
    judgeMosquitto(facts, onPi),
    ...(opts.ddnsHostname !== undefined ? [judgeDdclient(facts, opts.ddnsHostname, onPi)] : []),
    ...(opts.acme ? [judgeAcme(facts, onPi)] : []),
    ...(opts.nodeRed ? [judgeNodeRedInstall(facts, onPi)] : []),
    ...facts.disks.map(judgeDisk),
    ...(facts.memory ? [judgeMemory(facts.memory, onPi)] : []),
    judgeStatusReport(facts, onPi),
    ...judgePiConfig(facts, opts),
  ];
}

function judgeFailedUnits(facts: PiFacts, where: string, onPi: OnPi): CheckResult {
  if (facts.failedUnits === undefined)
    return warning("failed units", `${where}: systemctl could not be asked (${facts.errors.join("; ") || "no answer"})`, onPi("systemctl --failed"));
  if (facts.failedUnits.length === 0) return ok("failed units", "none");
  return failed("failed units", facts.failedUnits.join(", "), onPi(`journalctl -b -u ${facts.failedUnits[0]}`));
}

/** mosquitto runs, and has not been restarted since boot. */
function judgeMosquitto(facts: PiFacts, onPi: OnPi): CheckResult {
  const mosquitto = facts.units.get("mosquitto");
  if (!mosquitto || mosquitto.activeState !== "active") {
    return failed("mosquitto uptime", `mosquitto.service is ${mosquitto?.activeState || "unknown"}`, onPi("journalctl -b -u mosquitto"));
  }
  const up = facts.uptimeSeconds - mosquitto.activeEnterUs / 1e6;
  const restarts = mosquitto.restarts ? `; systemd restarted it ${mosquitto.restarts} time(s) since boot` : "";
  const detail = `active for ${duration(up)} (the Pi up ${duration(facts.uptimeSeconds)})${restarts}`;
  return mosquitto.restarts ? warning("mosquitto uptime", detail, onPi("journalctl -b -u mosquitto")) : ok("mosquitto uptime", detail);
}

/** ddclient runs, and its last update of the domain was accepted. */
function judgeDdclient(facts: PiFacts, domain: string, onPi: OnPi): CheckResult {
  const ddclient = facts.units.get("ddclient");
  const cache = facts.ddclientCache;
  if (!ddclient || ddclient.activeState !== "active")
    return failed("ddclient", `ddclient.service is ${ddclient?.activeState || "unknown"}`, onPi("journalctl -b -u ddclient"));
  if (cache === undefined || cache === "none" || cache === "missing") {
    return warning(
      "ddclient",
      `running, but it has not updated ${domain} yet (${cache === "missing" ? "no entry for it in" : "no"} /var/cache/ddclient/ddclient.cache)`,
      onPi("journalctl -u ddclient: it needs the Internet and ddns.token"),
    );
  }
  // ddclient 3.10 writes status and ip; later releases status-ipv4 and ipv4 (or -ipv6).
  const status = cache.status || cache["status-ipv4"] || cache["status-ipv6"] || "";
  const address = cache.ip || cache.ipv4 || cache.ipv6 || "";
  const attempted = Number(cache.atime) || 0;
  const updated = Number(cache.mtime) || 0;
  const when = (t: number) => (t ? `${isoOf(t)}, ${duration(facts.now - t)} ago` : "never");
  if (/^(good|nochg)$/.test(status))
    return ok("ddclient", `${domain} → ${address || "?"}: last update ${when(updated)} (${status}); last check ${when(attempted)}`);
  return failed(
    "ddclient",
    `${domain}: the last update ${when(attempted)} answered ${status || "nothing"}${address ? ` (address ${address})` : ""}`,
    onPi("journalctl -u ddclient; check ddns.token and ddns.provider"),
  );
}

/** Room left on a file system: the root needs more than the boot partition. */
function judgeDisk(d: PiFacts["disks"][number]): CheckResult {
  const share = d.size ? d.available / d.size : 0;
  const name = `disk ${d.mount}`;
  const detail = `${size(d.available)} free of ${size(d.size)} (${Math.round(share * 100)} %)`;
  const tight = d.mount === "/" ? d.available < 100 * MiB : d.available < 5 * MiB;
  const low = d.mount === "/" ? d.available < 500 * MiB || share < 0.1 : d.available < 20 * MiB;
  if (tight)
    return failed(
      name,
      detail,
      d.mount === "/"
        ? "free space on the Pi (journalctl --vacuum-size, apt clean), or use a larger card"
        : "remove old kernels' files from the boot partition",
    );
  if (low)
    return warning(
      name,
      detail,
      d.mount === "/" ? "mosquitto's persistence and updates need room: free space, or use a larger card" : "kernel updates need room on the boot partition",
    );
  return ok(name, detail);
}

function judgeMemory(memory: NonNullable<PiFacts["memory"]>, onPi: OnPi): CheckResult {
  const { total, available } = memory;
  const detail = `${size(available)} available of ${size(total)}`;
  if (available < 32 * MiB) return failed("memory", detail, onPi("ps aux --sort=-rss | head: something uses it all"));
  if (available < 0.1 * total || available < 64 * MiB) return warning("memory", detail, onPi("ps aux --sort=-rss | head"));
  return ok("memory", detail);
}

/** The status report pibake-status writes: there, recent, and with every listener listening. */
function judgeStatusReport(facts: PiFacts, onPi: OnPi): CheckResult {
  if (!facts.status)
    return warning(
      "pibake-status",
      "no /boot/firmware/pibake-status.txt: an image without pibake-status, or its first boot is not done",
      onPi("systemctl status pibake-status.service"),
    );
  const lines = facts.status.text.split("\n");
  const age = facts.now - facts.status.writtenAt;
  const image = lines.find((l) => l.startsWith("image:"))?.replace(/^image:\s*/, "");
  const notListening = lines.filter((l) => /NOT listening/.test(l)).map((l) => l.trim());
  const detail = `written ${isoOf(facts.status.writtenAt)} (${duration(age)} ago)${image ? `: ${image}` : ""}`;
  // The timer rewrites it hourly; older means the timer stopped.
  if (notListening.length) return warning("pibake-status", `${detail}; it says ${notListening.join("; ")}`, onPi("cat /boot/firmware/pibake-status.txt"));
  if (age > 2 * 3600)
    return warning("pibake-status", `${detail}: not rewritten for more than the hour of its timer`, onPi("systemctl status pibake-status.timer"));
  return ok("pibake-status", detail);
}

/** Which config the Pi runs: the last push's record, else the build's digest in the status report. Nothing when either is unknown. */
function judgePiConfig(facts: PiFacts, opts: JudgeOptions): CheckResult[] {
  const reported = facts.status?.text.match(/config (sha256:[0-9a-f]{64})/)?.[1];
  const runs = facts.pushed
    ? { digest: facts.pushed.digest, how: `pushed ${facts.pushed.at}` }
    : reported
      ? { digest: reported, how: "built with it, never pushed" }
      : undefined;
  if (!opts.configDigest || !runs) return [];
  if (runs.digest === opts.configDigest) return [ok("pi config", `the Pi runs this config (${runs.how})`)];
  return [
    warning(
      "pi config",
      `the Pi runs another config than this one (${runs.how}: ${runs.digest.slice(0, 19)}…, this one ${opts.configDigest.slice(0, 19)}…)`,
      opts.pushCommand ? `bring it to this config: ${opts.pushCommand}` : undefined,
    ),
  ];
}

/** The fact that says whether Node-RED's first-boot install is done, under way or stuck. */
export const NODE_RED_INSTALL = "node-red install";

/** Node-RED's first-boot install (pibake-firstboot.service): done, under way, or failed and waiting to try again. */
function judgeNodeRedInstall(facts: PiFacts, onPi: (cmd: string) => string): CheckResult {
  const journal = onPi("journalctl -b -u pibake-firstboot");
  if (facts.firstBootDone !== undefined) return ok(NODE_RED_INSTALL, `installed by the first boot (done ${facts.firstBootDone || "at an unknown time"})`);
  const unit = facts.units.get("pibake-firstboot");
  if (!unit || unit.loadState !== "loaded")
    return failed(NODE_RED_INSTALL, `pibake-firstboot.service is ${unit?.loadState || "unknown"} and the first boot has not installed Node-RED`, journal);
  const restarts = unit.restarts ? `, tried ${unit.restarts + 1} times` : "";
  if (unit.subState === "auto-restart") return failed(NODE_RED_INSTALL, `the first boot's install failed${restarts}; systemd runs it again later`, journal);
  if (unit.activeState === "active" || unit.activeState === "activating") {
    const running = unit.activeEnterUs ? ` for ${duration(facts.uptimeSeconds - unit.activeEnterUs / 1e6)}` : "";
    return warning(
      NODE_RED_INSTALL,
      `the first boot is installing npm, Node-RED and the dashboard (running${running}${restarts}); the editor answers when it is done`,
      onPi("journalctl -fu pibake-firstboot"),
    );
  }
  return failed(NODE_RED_INSTALL, `pibake-firstboot.service is ${unit.activeState}${restarts}, and the first boot has not installed Node-RED`, journal);
}

/** The public certificate's renewal: the timer runs, and what its last run said. */
function judgeAcme(facts: PiFacts, onPi: (cmd: string) => string): CheckResult {
  const name = "public certificate";
  const journal = onPi("journalctl -u pibake-acme");
  if (!facts.acme || facts.acme.timer !== "active")
    return failed(
      name,
      `pibake-acme.timer is ${facts.acme?.timer || "not there"}: nothing renews the certificate`,
      onPi("systemctl enable --now pibake-acme.timer"),
    );
  const s = facts.acme.status;
  if (!s) return warning(name, "no renewal has run yet: the own CA's certificate is served until the first one", journal);
  const at = Number(s.checked) ? `${isoOf(Number(s.checked))}, ${duration(facts.now - Number(s.checked))} ago` : "at an unknown time";
  if (s.result === "ok") {
    const until = Number(s.not_after)
      ? `, valid until ${isoOf(Number(s.not_after))} (${Math.floor((Number(s.not_after) - facts.now) / 86_400)} days left)`
      : "";
    return ok(name, `last run ${at}: ${s.message ?? "ok"}; issued by ${s.issuer ?? "?"}${until}`);
  }
  const next = Number(s.next_attempt) ? `; the next attempt after ${isoOf(Number(s.next_attempt))}` : "";
  return warning(
    name,
    `the last ${s.failures ?? "?"} attempt(s) failed, the last ${at}: ${s.message ?? "no reason recorded"}${next}; the broker keeps its current certificate`,
    journal,
  );
}
