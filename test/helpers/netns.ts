/**
 * Network namespaces for the firewall tests: the Pi, a client on its home
 * network and a client on the Internet, joined by veth pairs. Every address
 * lives inside the namespaces; nothing touches the host's own network.
 *
 *   LAN peer  eth0 192.168.50.50/24, fd50::50/64  ── lan0 192.168.50.10/24, fd50::10/64   Pi
 *   Internet  eth0 203.0.113.7/24 (and .8), 2001:db8:113::7/64 ── wan0 203.0.113.1/24, 2001:db8:113::1/64
 *
 * The Pi stands behind a router that forwards the TLS port without changing
 * the source address, so its firewall sees the Internet client's own address.
 */
import { execa, type ResultPromise } from "execa";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import type { OverlayFile } from "../../src/render/overlay.js";
import { sleep } from "./mosquitto.js";

const PROBE = path.join(path.dirname(fileURLToPath(import.meta.url)), "netns-probe.mjs");

export const PI_LAN = { v4: "192.168.50.10", v6: "fd50::10" };
export const PI_WAN = { v4: "203.0.113.1", v6: "2001:db8:113::1" };
export const LAN_PEER = { v4: "192.168.50.50", v6: "fd50::50" };
export const INTERNET_PEER = { v4: "203.0.113.7", v4b: "203.0.113.8", v6: "2001:db8:113::7" };

/** Why namespaces cannot be made here, or undefined when they can. */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "needs root to make network namespaces (ip netns add)";
  for (const [tool, flag] of [
    ["ip", "-V"],
    ["nft", "--version"],
  ] as const) {
    const r = await execa(tool, [flag], { reject: false });
    if (r.exitCode !== 0) return `${tool} is not installed (CI installs iproute2 and nftables)`;
  }
  const name = `pbprobe-${process.pid}`;
  const r = await execa("ip", ["netns", "add", name], { reject: false });
  if (r.exitCode !== 0) return `ip netns add fails here: ${r.stderr.trim()}`;
  await execa("ip", ["netns", "del", name], { reject: false });
  return undefined;
}

export interface Topology {
  pi: string;
  lan: string;
  inet: string;
  /** Run a command in a namespace, bounded. */
  run(ns: string, cmd: string, args: string[], timeoutMs?: number): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }>;
  destroy(): Promise<void>;
}

const sh = (cmd: string, args: string[], timeoutMs = 10_000) => execa(cmd, args, { timeout: timeoutMs });

/** Kill a network namespace's processes, then delete it: a namespace with processes in it outlives `ip netns del`. */
export async function deleteNamespace(ns: string): Promise<void> {
  const pids = await execa("ip", ["netns", "pids", ns], { reject: false });
  for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // already gone
    }
  }
  await execa("ip", ["netns", "del", ns], { reject: false });
}

export async function makeTopology(tag: string): Promise<Topology> {
  const names = { pi: `pb-${tag}-${process.pid}-pi`, lan: `pb-${tag}-${process.pid}-lan`, inet: `pb-${tag}-${process.pid}-inet` };
  const made: string[] = [];
  const destroy = async () => {
    for (const ns of made.splice(0)) await deleteNamespace(ns);
  };
  try {
    for (const ns of Object.values(names)) {
      await sh("ip", ["netns", "add", ns]);
      made.push(ns);
      await sh("ip", ["-n", ns, "link", "set", "lo", "up"]);
    }
    // Each pair is made inside the Pi's namespace, its peer end moved at once: no name in the host's namespace.
    await sh("ip", ["-n", names.pi, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", names.lan]);
    await sh("ip", ["-n", names.pi, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", names.inet]);
    const addr = async (ns: string, dev: string, ...cidrs: string[]) => {
      for (const c of cidrs) await sh("ip", ["-n", ns, "addr", "add", c, "dev", dev, ...(c.includes(":") ? ["nodad"] : [])]);
      await sh("ip", ["-n", ns, "link", "set", dev, "up"]);
    };
    await addr(names.pi, "lan0", `${PI_LAN.v4}/24`, `${PI_LAN.v6}/64`);
    await addr(names.pi, "wan0", `${PI_WAN.v4}/24`, `${PI_WAN.v6}/64`);
    await addr(names.lan, "eth0", `${LAN_PEER.v4}/24`, `${LAN_PEER.v6}/64`);
    await addr(names.inet, "eth0", `${INTERNET_PEER.v4}/24`, `${INTERNET_PEER.v4b}/24`, `${INTERNET_PEER.v6}/64`);
  } catch (err) {
    await destroy();
    throw err;
  }
  return {
    ...names,
    async run(ns, cmd, args, timeoutMs = 20_000) {
      const r = await execa("ip", ["netns", "exec", ns, cmd, ...args], { reject: false, timeout: timeoutMs });
      return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    },
    destroy,
  };
}

/** Load a ruleset into a namespace with the real `nft -f`; throws with nft's message. */
export async function loadRuleset(topo: Topology, ns: string, file: string): Promise<void> {
  const r = await topo.run(ns, "nft", ["-f", file]);
  if (r.exitCode !== 0) throw new Error(`nft -f ${file} in ${ns} failed (${r.exitCode}): ${r.stderr}`);
}

/** Run netns-probe.mjs in a namespace and return its one JSON answer. */
export async function probe<T = string[]>(topo: Topology, ns: string, req: Record<string, unknown>, timeoutMs = 60_000): Promise<T> {
  const r = await topo.run(ns, process.execPath, [PROBE, JSON.stringify(req)], timeoutMs);
  if (r.exitCode !== 0) throw new Error(`probe ${JSON.stringify(req)} in ${ns} exited ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as T;
}

/** A long-running probe (listeners, a held MQTT session): lines out, lines in, stopped by stop(). */
export class ProbeProcess {
  readonly child: ChildProcess;
  private readonly lines: string[] = [];
  stderr = "";
  constructor(ns: string, req: Record<string, unknown>) {
    this.child = spawn("ip", ["netns", "exec", ns, process.execPath, PROBE, JSON.stringify(req)], { stdio: ["pipe", "pipe", "pipe"] });
    readline.createInterface({ input: this.child.stdout! }).on("line", (l) => this.lines.push(l));
    this.child.stderr!.on("data", (d: Buffer) => (this.stderr += d.toString()));
    const kill = () => this.child.kill("SIGKILL");
    process.once("exit", kill);
    this.child.once("exit", () => process.removeListener("exit", kill));
  }
  /** The next JSON line, within `ms`. */
  async next(ms: number): Promise<unknown> {
    const deadline = Date.now() + ms;
    while (this.lines.length === 0) {
      if (this.child.exitCode !== null) throw new Error(`probe exited ${this.child.exitCode}: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`probe said nothing within ${ms} ms: ${this.stderr}`);
      await sleep(20);
    }
    return JSON.parse(this.lines.shift()!);
  }
  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.stdin!.end();
    this.child.kill("SIGTERM");
    const deadline = Date.now() + 3000;
    while (this.child.exitCode === null && this.child.signalCode === null && Date.now() < deadline) await sleep(20);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }
}

/**
 * The render's Mosquitto files laid out under `root` (paths rewritten from
 * /etc/mosquitto to there), with a main config as Debian's but logging to
 * stderr the way the Pi's journal gets it (no timestamps, connection
 * messages). The listeners stay as rendered (inside a namespace their ports
 * are free), or with `loopback` listen on 127.0.0.1 only. Returns the main
 * config's path.
 */
export function layOutMosquitto(overlay: OverlayFile[], root: string, opts: { loopback?: boolean } = {}): string {
  for (const f of overlay.filter((o) => o.path.startsWith("etc/mosquitto/"))) {
    const target = path.join(root, f.path);
    mkdirSync(path.dirname(target), { recursive: true });
    let content: string | Buffer = f.content;
    if (f.path.endsWith("pibake.conf")) {
      content = f.content.toString("utf8").replaceAll("/etc/mosquitto/", `${root}/etc/mosquitto/`);
      if (opts.loopback) content = content.replace(/^listener (\d+)$/gm, "listener $1 127.0.0.1");
    }
    writeFileSync(target, content, { mode: f.mode });
  }
  mkdirSync(path.join(root, "var/lib/mosquitto"), { recursive: true });
  const main = path.join(root, "etc/mosquitto/mosquitto.conf");
  writeFileSync(
    main,
    [
      "user root",
      // The rendered config keeps persistence on; Debian's main config puts the database here.
      `persistence_location ${root}/var/lib/mosquitto/`,
      "log_dest stderr",
      "log_timestamp false",
      "connection_messages true",
      "log_type error",
      "log_type warning",
      "log_type notice",
      "log_type information",
      `include_dir ${root}/etc/mosquitto/conf.d`,
      "",
    ].join("\n"),
  );
  return main;
}

/** mosquitto in a namespace (or, with ns undefined, on the host), its log collected and handed on line by line. */
export class NetnsBroker {
  readonly child: ResultPromise;
  log = "";
  constructor(ns: string | undefined, mainConf: string, onLine?: (line: string) => void) {
    const cmd = ns ? ["ip", "netns", "exec", ns, "mosquitto"] : ["mosquitto"];
    this.child = execa(cmd[0]!, [...cmd.slice(1), "-c", mainConf], { reject: false, all: true, buffer: false });
    readline.createInterface({ input: this.child.all! }).on("line", (l) => {
      this.log += `${l}\n`;
      onLine?.(l);
    });
    const kill = () => this.child.kill("SIGKILL");
    process.once("exit", kill);
    void this.child.finally(() => process.removeListener("exit", kill));
  }
  async waitForLog(pattern: RegExp, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pattern.test(this.log)) {
      if (this.child.exitCode !== null) throw new Error(`mosquitto exited ${this.child.exitCode} before logging ${pattern}:\n${this.log}`);
      if (Date.now() > deadline) throw new Error(`mosquitto did not log ${pattern} within ${ms} ms:\n${this.log}`);
      await sleep(20);
    }
  }
  async stop(): Promise<void> {
    this.child.kill("SIGTERM");
    const deadline = Date.now() + 3000;
    while (this.child.exitCode === null && this.child.signalCode === null && Date.now() < deadline) await sleep(20);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.child.catch(() => undefined);
  }
}
