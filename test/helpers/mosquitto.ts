/**
 * A real mosquitto running a render's Mosquitto files (conf.d fragment, password
 * file, ACL, certificate and key) under a temporary root, listening on free
 * loopback ports, and bounded clients for it. Used by test/mosquitto.test.ts
 * and the hostile-input tests.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { expect } from "vitest";
import { freePort } from "./net.js";
import { tempDir, type Fixture } from "./render-fixture.js";
import type { Netns } from "./host-netns.js";

export const START_TIMEOUT_MS = 10_000;
export const CONNECT_TIMEOUT_MS = 5_000;
/** How long a message that must not arrive is given to arrive anyway. */
export const QUIET_MS = 500;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** mosquitto in the foreground, as a child of the test; its stdout and stderr are its log. */
export class Broker {
  readonly child: ChildProcess;
  log = "";
  private exitCode: number | null | undefined;
  private spawnError: Error | undefined;
  private readonly exited: Promise<void>;

  /** prefix: a command that runs mosquitto, such as `ip netns exec NAME`. */
  constructor(confPath: string, prefix: string[] = []) {
    const [cmd, ...args] = prefix.length > 0 ? prefix : ["mosquitto"];
    this.child = spawn(cmd!, [...args, ...(prefix.length > 0 ? ["mosquitto"] : []), "-c", confPath], { stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout!.on("data", (d: Buffer) => (this.log += d.toString("utf8")));
    this.child.stderr!.on("data", (d: Buffer) => (this.log += d.toString("utf8")));
    // Should the test process end without afterAll (a crash), the broker ends with it.
    const killOnExit = () => this.child.kill("SIGKILL");
    process.once("exit", killOnExit);
    this.exited = new Promise((resolve) => {
      this.child.once("exit", () => process.removeListener("exit", killOnExit));
      this.child.once("error", (err) => {
        this.spawnError = err;
        this.exitCode = null;
        resolve();
      });
      this.child.once("exit", (code) => {
        this.exitCode = code;
        resolve();
      });
    });
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  async waitForLog(pattern: RegExp, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.log) && this.running && Date.now() < deadline) await sleep(20);
    if (pattern.test(this.log)) return;
    const why = this.spawnError
      ? `could not be started (${this.spawnError.message}); CI installs the Debian package mosquitto`
      : this.running
        ? `did not log ${pattern} within ${timeoutMs} ms`
        : `exited with code ${this.exitCode} before logging ${pattern}`;
    throw new Error(`mosquitto ${why}\n--- mosquitto's log ---\n${this.log}`);
  }

  /** SIGTERM, then SIGKILL after a bounded wait. */
  async stop(): Promise<void> {
    if (!this.running) return;
    const within = (ms: number) => Promise.race([this.exited.then(() => true), sleep(ms).then(() => false)]);
    this.child.kill("SIGTERM");
    if (!(await within(3000))) {
      this.child.kill("SIGKILL");
      await within(3000);
    }
  }
}

export type Connected = { client: MqttClient; error?: undefined } | { client?: undefined; error: Error & { code?: string | number } };

export const clients = new Set<MqttClient>();

/** Connect once (no reconnects), bounded; resolves with the client or the error that ended the attempt. */
export function connect(opts: IClientOptions): Promise<Connected> {
  return new Promise((resolve) => {
    const client = mqtt.connect({ reconnectPeriod: 0, connectTimeout: CONNECT_TIMEOUT_MS, clean: true, ...opts });
    clients.add(client);
    let settled = false;
    const settle = (r: Connected) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (r.error) client.end(true);
      resolve(r);
    };
    const timer = setTimeout(() => settle({ error: new Error(`no CONNACK within ${CONNECT_TIMEOUT_MS + 1000} ms`) }), CONNECT_TIMEOUT_MS + 1000);
    client.once("connect", () => settle({ client }));
    client.once("error", (error) => settle({ error }));
    client.once("close", () => settle({ error: new Error("connection closed before CONNACK") }));
  });
}

export async function mustConnect(opts: IClientOptions): Promise<MqttClient> {
  const r = await connect(opts);
  if (r.error) throw new Error(`${opts.username ?? "anonymous"} could not connect: ${r.error.message}`);
  return r.client;
}

/** Messages a client receives, by topic, with a bounded wait for one. */
export function inbox(client: MqttClient) {
  const got: { topic: string; payload: string }[] = [];
  client.on("message", (topic, payload) => got.push({ topic, payload: payload.toString("utf8") }));
  return {
    got,
    async waitFor(topic: string, payload: string, timeoutMs = 3000): Promise<boolean> {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (got.some((m) => m.topic === topic && m.payload === payload)) return true;
        await sleep(20);
      }
      return got.some((m) => m.topic === topic && m.payload === payload);
    },
  };
}

export async function subscribe(client: MqttClient, filter: string): Promise<number> {
  const granted = await client.subscribeAsync(filter, { qos: 1 });
  return granted[0]!.qos;
}

export interface RunningBroker {
  broker: Broker;
  /** The temporary root that stands for the Pi's / (etc/mosquitto/… below it). */
  root: string;
  /** Where clients connect: 127.0.0.1, or the namespace's address. */
  host: string;
  lanPort: number;
  tlsPort: number;
  /** WebSockets listeners, when the config has them. */
  wsTlsPort?: number;
  wsLanPort?: number;
}

export interface LaidOut {
  root: string;
  /** The rendered mosquitto.conf with paths under root: what to start mosquitto with. */
  mainConf: string;
  host: string;
  /** The port each rendered port was moved to (the same port inside a namespace). */
  ports: Map<number, number>;
}

/**
 * Lays out the render's Mosquitto files (mosquitto.conf, conf.d fragment, password file,
 * ACL, certificates) under a temporary root, their /etc, /var and /run paths moved there.
 * Outside a namespace every listener is moved to a free port on 127.0.0.1. WebSockets
 * listeners need a namespace: mosquitto 2.0.11's (libwebsockets 4.1) ignore the bind
 * address and would listen on every address of the host.
 */
export async function layOutRenderedBroker(fx: Fixture, opts: { netns?: Netns } = {}): Promise<LaidOut> {
  const root = tempDir("pibake-mosquitto-");
  // Every Mosquitto file of the overlay, at its path under the temporary root, with its rendered mode.
  const mosquittoFiles = fx.rendered.overlay.filter((f) => f.path.startsWith("etc/mosquitto/"));
  // (The ACL only when some user has topic rules.)
  expect(
    mosquittoFiles
      .map((f) => f.path)
      .filter((p) => p !== "etc/mosquitto/acl")
      .sort(),
  ).toEqual([
    "etc/mosquitto/certs/ca.crt",
    "etc/mosquitto/certs/server.crt",
    "etc/mosquitto/certs/server.key",
    "etc/mosquitto/conf.d/pibake.conf",
    "etc/mosquitto/mosquitto.conf",
    "etc/mosquitto/passwd",
  ]);
  const fragment = fx.overlayText("etc/mosquitto/conf.d/pibake.conf");
  const renderedPorts = [...fragment.matchAll(/^listener (\d+)$/gm)].map((m) => Number(m[1]));
  if (!opts.netns && /^protocol websockets$/m.test(fragment)) throw new Error("WebSockets listeners are tested inside a network namespace (opts.netns)");
  const ports = new Map<number, number>();
  for (const p of renderedPorts) {
    let port = opts.netns ? p : await freePort();
    while (!opts.netns && [...ports.values()].includes(port)) port = await freePort();
    ports.set(p, port);
  }
  const moveToRoot = (text: string) => text.replace(/(^|\s)\/(etc|var|run)\//gm, `$1${root}/$2/`);
  for (const f of mosquittoFiles) {
    const target = path.join(root, f.path);
    mkdirSync(path.dirname(target), { recursive: true });
    let content = f.content.toString("utf8");
    if (f.path.endsWith(".conf")) {
      content = moveToRoot(content);
      if (!opts.netns) content = content.replace(/^listener (\d+)$/gm, (_, p: string) => `listener ${ports.get(Number(p))} 127.0.0.1`);
      // Nothing may still point at the host's own /etc, /var or /run.
      expect(content.split("\n").filter((l) => /(^|\s)\/(etc|var|run)\//.test(l))).toEqual([]);
    }
    if (f.path === "etc/mosquitto/mosquitto.conf") {
      // As root mosquitto would switch to the user "mosquitto", who does not own these files;
      // every log type, so that tests can read what the broker did.
      content += `${process.getuid?.() === 0 ? "user root\n" : ""}log_type all\n`;
    }
    writeFileSync(target, content, { mode: f.mode });
  }
  mkdirSync(path.join(root, "var/lib/mosquitto"), { recursive: true });
  mkdirSync(path.join(root, "run/mosquitto"), { recursive: true });
  return { root, mainConf: path.join(root, "etc/mosquitto/mosquitto.conf"), host: opts.netns?.nsAddress ?? "127.0.0.1", ports };
}

/** Starts mosquitto on files laid out by layOutRenderedBroker (bounded), in the namespace if given. */
export async function startLaidOutBroker(fx: Fixture, laid: LaidOut, opts: { netns?: Netns } = {}): Promise<RunningBroker> {
  const broker = new Broker(laid.mainConf, opts.netns?.exec ?? []);
  await broker.waitForLog(/mosquitto version \S+ running/, START_TIMEOUT_MS);
  const at = (p: number | undefined) => (p === undefined ? undefined : laid.ports.get(p));
  const ws = fx.model.mqtt.websockets;
  return {
    broker,
    root: laid.root,
    host: laid.host,
    lanPort: at(fx.model.mqtt.lanPort)!,
    tlsPort: at(fx.model.mqtt.tlsPort)!,
    ...(ws ? { wsTlsPort: at(ws.tlsPort)! } : {}),
    ...(ws?.lanPort !== undefined ? { wsLanPort: at(ws.lanPort)! } : {}),
  };
}

/** Lays out the render's Mosquitto files under a temporary root and starts mosquitto on them (bounded). */
export async function startRenderedBroker(fx: Fixture, opts: { netns?: Netns } = {}): Promise<RunningBroker> {
  return startLaidOutBroker(fx, await layOutRenderedBroker(fx, opts), opts);
}
