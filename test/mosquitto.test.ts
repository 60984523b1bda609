/**
 * The rendered Mosquitto files (conf.d fragment, password file, ACL, server
 * certificate and key) run in a real mosquitto: logins, TLS, ACL rules.
 * The $7$ hashes pibake writes are proven here too: every user logs in with them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { execa } from "execa";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { redactAll, removeAllFixtures, renderFixture, tempDir, unrelatedCaPem, type Fixture } from "./helpers/render-fixture.js";

const START_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
/** How long a message that must not arrive is given to arrive anyway. */
const QUIET_MS = 500;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** mosquitto in the foreground, as a child of the test; its stdout and stderr are its log. */
class Broker {
  readonly child: ChildProcess;
  log = "";
  private exitCode: number | null | undefined;
  private spawnError: Error | undefined;
  private readonly exited: Promise<void>;

  constructor(confPath: string) {
    this.child = spawn("mosquitto", ["-c", confPath], { stdio: ["ignore", "pipe", "pipe"] });
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

type Connected = { client: MqttClient; error?: undefined } | { client?: undefined; error: Error & { code?: string | number } };

const clients = new Set<MqttClient>();

/** Connect once (no reconnects), bounded; resolves with the client or the error that ended the attempt. */
function connect(opts: IClientOptions): Promise<Connected> {
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

async function mustConnect(opts: IClientOptions): Promise<MqttClient> {
  const r = await connect(opts);
  if (r.error) throw new Error(`${opts.username ?? "anonymous"} could not connect: ${r.error.message}`);
  return r.client;
}

/** Messages a client receives, by topic, with a bounded wait for one. */
function inbox(client: MqttClient) {
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

async function subscribe(client: MqttClient, filter: string): Promise<number> {
  const granted = await client.subscribeAsync(filter, { qos: 1 });
  return granted[0]!.qos;
}

describe("mosquitto runs the rendered configuration", () => {
  let fx: Fixture;
  let broker: Broker | undefined;
  let root: string;
  let lanPort: number;
  let tlsPort: number;
  let caPem: string;
  let domain: string;
  let pw: Record<string, string>;

  beforeAll(async () => {
    fx = await renderFixture();
    pw = fx.clear.mqtt;
    domain = fx.model.tls.domain;
    caPem = fx.overlayText("etc/mosquitto/certs/ca.crt");
    root = tempDir("pibake-mosquitto-");
    lanPort = await freePort();
    tlsPort = await freePort();
    while (tlsPort === lanPort) tlsPort = await freePort();

    // Every Mosquitto file of the overlay, at its path under the temporary root, with its rendered mode.
    const mosquittoFiles = fx.rendered.overlay.filter((f) => f.path.startsWith("etc/mosquitto/"));
    expect(mosquittoFiles.map((f) => f.path).sort()).toEqual([
      "etc/mosquitto/acl",
      "etc/mosquitto/certs/ca.crt",
      "etc/mosquitto/certs/server.crt",
      "etc/mosquitto/certs/server.key",
      "etc/mosquitto/conf.d/pibake.conf",
      "etc/mosquitto/passwd",
    ]);
    for (const f of mosquittoFiles) {
      const target = path.join(root, f.path);
      mkdirSync(path.dirname(target), { recursive: true });
      let content = f.content.toString("utf8");
      if (f.path === "etc/mosquitto/conf.d/pibake.conf") {
        const before = content;
        content = content.replaceAll("/etc/mosquitto/", `${root}/etc/mosquitto/`);
        content = content.replace(/^listener 1883$/m, `listener ${lanPort} 127.0.0.1`).replace(/^listener 8883$/m, `listener ${tlsPort} 127.0.0.1`);
        expect(content.match(/^listener \d+ 127\.0\.0\.1$/gm), `both listeners rewritten in:\n${before}`).toHaveLength(2);
        // Nothing may still point at the host's own /etc.
        expect(content.split("\n").filter((l) => /(^|\s)\/etc\//.test(l))).toEqual([]);
      }
      writeFileSync(target, content, { mode: f.mode });
    }
    mkdirSync(path.join(root, "var/lib/mosquitto"), { recursive: true });
    // Like Debian's /etc/mosquitto/mosquitto.conf, but logging everything to stderr and no pid file.
    const mainConf = path.join(root, "etc/mosquitto/mosquitto.conf");
    writeFileSync(
      mainConf,
      [
        // As root mosquitto would switch to the user "mosquitto", who does not own these files.
        ...(process.getuid?.() === 0 ? ["user root"] : []),
        "persistence true",
        `persistence_location ${root}/var/lib/mosquitto/`,
        "log_dest stderr",
        "log_type all",
        `include_dir ${root}/etc/mosquitto/conf.d`,
        "",
      ].join("\n"),
    );
    broker = new Broker(mainConf);
    await broker.waitForLog(/mosquitto version \S+ running/, START_TIMEOUT_MS);
  });

  afterEach(async () => {
    await Promise.all([...clients].map((c) => c.endAsync(true).catch(() => undefined)));
    clients.clear();
  });

  afterAll(async () => {
    await broker?.stop();
    fx?.cleanup();
    removeAllFixtures();
  });

  /** mqtt.js hands these on to tls.connect. */
  type TlsClientOptions = IClientOptions & Pick<import("node:tls").ConnectionOptions, "minVersion" | "maxVersion" | "ciphers">;
  const tlsOpts = (extra: TlsClientOptions = {}): TlsClientOptions => ({
    protocol: "mqtts",
    host: "127.0.0.1",
    port: tlsPort,
    ca: caPem,
    servername: domain,
    rejectUnauthorized: true,
    ...extra,
  });
  const lanOpts = (extra: IClientOptions = {}): IClientOptions => ({ protocol: "mqtt", host: "127.0.0.1", port: lanPort, ...extra });

  it("loads the rendered conf.d fragment, password file and ACL without errors or warnings", () => {
    expect(broker!.running).toBe(true);
    expect(broker!.log).toContain(`Loading config file ${root}/etc/mosquitto/conf.d/pibake.conf`);
    expect(broker!.log).toContain(`Opening ipv4 listen socket on port ${lanPort}.`);
    expect(broker!.log).toContain(`Opening ipv4 listen socket on port ${tlsPort}.`);
    const complaints = broker!.log
      .split("\n")
      .filter((l) => /error|warning|unable|invalid|denied/i.test(l))
      .filter((l) => !/Warning: Mosquitto should not be run as root/.test(l));
    expect(complaints).toEqual([]);
    // The password file holds $7$ (PBKDF2-SHA512) hashes, one per user, and no clear text.
    const passwd = fx.overlayText("etc/mosquitto/passwd");
    // (pibake may add users of its own, such as Node-RED's.)
    expect(passwd.trim().split("\n").map((l) => l.replace(/:.*/, ""))).toEqual(expect.arrayContaining(["sensors", "phone", "hub"]));
    for (const line of passwd.trim().split("\n")) expect(line).toMatch(/^[^:]+:\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    for (const secret of Object.values(pw)) expect(passwd).not.toContain(secret);
  });

  it("accepts every user's password ($7$ hash) over TLS, verifying the chain against ca.crt and the name against the domain", async () => {
    for (const user of ["sensors", "phone", "hub"]) {
      const client = await mustConnect(tlsOpts({ username: user, password: pw[user] }));
      const socket = (client.stream as unknown as import("node:tls").TLSSocket);
      expect(socket.authorized).toBe(true);
      expect(socket.getProtocol()).toMatch(/^TLSv1\.[23]$/);
    }
    for (const user of ["sensors", "phone", "hub"]) expect(broker!.log).toMatch(new RegExp(`New client connected from 127\\.0\\.0\\.1:\\d+ as \\S+ \\(p2, c1, k\\d+, u'${user}'\\)`));
  });

  it("lets a TLS client publish and receive its own message on an allowed topic", async () => {
    const phone = await mustConnect(tlsOpts({ username: "phone", password: pw.phone }));
    const box = inbox(phone);
    expect(await subscribe(phone, "home/commands/+")).toBe(1);
    await phone.publishAsync("home/commands/lamp", "on over TLS", { qos: 1 });
    expect(await box.waitFor("home/commands/lamp", "on over TLS")).toBe(true);
  });

  it("refuses a wrong password and a client without credentials with CONNACK 'not authorized'", async () => {
    for (const opts of [tlsOpts, lanOpts]) {
      const wrong = await connect(opts({ username: "phone", password: `${pw.phone}x` }));
      expect(wrong.error?.code, String(wrong.error)).toBe(5);
      expect(wrong.error?.message).toMatch(/not authorized/i);
      const anonymous = await connect(opts());
      expect(anonymous.error?.code, String(anonymous.error)).toBe(5);
      // A known user with another user's password is refused too.
      const swapped = await connect(opts({ username: "hub", password: pw.phone }));
      expect(swapped.error?.code, String(swapped.error)).toBe(5);
    }
    expect(broker!.log).toMatch(/Sending CONNACK to 127\.0\.0\.1 \(0, 5\)/);
    expect(broker!.log).toContain("disconnected, not authorised.");
  });

  it("refuses TLS 1.1 on the server side, while the same client code gets in with TLS 1.2", async () => {
    // SECLEVEL=0 lets this client offer TLS 1.1 at all (OpenSSL 3 refuses it by default on the client).
    const attempt = (version: "TLSv1.1" | "TLSv1.2") =>
      connect(tlsOpts({ username: "hub", password: pw.hub, minVersion: version, maxVersion: version, ciphers: "DEFAULT@SECLEVEL=0" }));
    const tls12 = await attempt("TLSv1.2");
    expect(tls12.error, String(tls12.error)).toBeUndefined();
    expect((tls12.client!.stream as unknown as import("node:tls").TLSSocket).getProtocol()).toBe("TLSv1.2");
    const tls11 = await attempt("TLSv1.1");
    expect(tls11.client).toBeUndefined();
    // An alert received from the server, not a client that could not offer TLS 1.1.
    // Node reports it as EPROTO with OpenSSL's "received alert" text (alert 70 is protocol_version).
    expect(String(tls11.error)).toMatch(/tlsv1 alert protocol version/);
    expect(String(tls11.error)).toMatch(/SSL alert number 70/);
  });

  it("fails verification for a name the certificate does not carry", async () => {
    const r = await connect(tlsOpts({ username: "hub", password: pw.hub, servername: "other.example.com" }));
    expect(r.client).toBeUndefined();
    expect(r.error?.code, String(r.error)).toBe("ERR_TLS_CERT_ALTNAME_INVALID");
    // And a client that trusts only another CA does not accept the chain.
    const r2 = await connect(tlsOpts({ username: "hub", password: pw.hub, ca: await unrelatedCaPem() }));
    expect(r2.error?.code, String(r2.error)).toMatch(/^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/);
  });

  it("enforces the ACL: a write-only user receives nothing on its topics; a read-only user's publish is dropped", async () => {
    const sensors = await mustConnect(lanOpts({ username: "sensors", password: pw.sensors }));
    const phone = await mustConnect(lanOpts({ username: "phone", password: pw.phone }));
    const hub = await mustConnect(lanOpts({ username: "hub", password: pw.hub }));
    const sensorsBox = inbox(sensors);
    const phoneBox = inbox(phone);
    const hubBox = inbox(hub);
    await subscribe(sensors, "home/sensors/#");
    await subscribe(phone, "home/#");
    await subscribe(hub, "home/#");

    // sensors may write home/sensors/#: its reading reaches phone (read home/#).
    await sensors.publishAsync("home/sensors/temp", "21.5", { qos: 1 });
    expect(await phoneBox.waitFor("home/sensors/temp", "21.5")).toBe(true);
    // hub publishes there too: phone gets it, sensors (write only) must not.
    await hub.publishAsync("home/sensors/temp", "from hub", { qos: 1 });
    expect(await phoneBox.waitFor("home/sensors/temp", "from hub")).toBe(true);
    await sleep(QUIET_MS);
    expect(sensorsBox.got).toEqual([]);

    // phone may only read home/sensors/#: its publish there is dropped. Then an allowed
    // publish on the same connection: once that arrives, the forbidden one would have.
    await phone.publishAsync("home/sensors/temp", "forged by phone", { qos: 1 });
    await phone.publishAsync("home/commands/lamp", "off", { qos: 1 });
    expect(await hubBox.waitFor("home/commands/lamp", "off")).toBe(true);
    await sleep(QUIET_MS);
    expect(hubBox.got.filter((m) => m.payload === "forged by phone")).toEqual([]);
    expect(phoneBox.got.filter((m) => m.payload === "forged by phone")).toEqual([]);
    expect(broker!.log).toMatch(/Denied PUBLISH from \S+ \(d0, q1, r0, m\d+, 'home\/sensors\/temp', \.\.\. \(15 bytes\)\)/);
    // sensors may not publish outside its subtree either.
    await sensors.publishAsync("home/commands/lamp", "sensors forged", { qos: 1 });
    await phone.publishAsync("home/commands/lamp", "on", { qos: 1 });
    expect(await hubBox.waitFor("home/commands/lamp", "on")).toBe(true);
    await sleep(QUIET_MS);
    expect(hubBox.got.filter((m) => m.payload === "sensors forged")).toEqual([]);
  });

  it("lets the LAN listener (plain MQTT) accept the right password and refuse anonymous clients", async () => {
    const hub = await mustConnect(lanOpts({ username: "hub", password: pw.hub }));
    expect(hub.stream).not.toHaveProperty("encrypted", true);
    const box = inbox(hub);
    await subscribe(hub, "lan/check");
    await hub.publishAsync("lan/check", "plain", { qos: 1 });
    expect(await box.waitFor("lan/check", "plain")).toBe(true);
    const anonymous = await connect(lanOpts());
    expect(anonymous.error?.code, String(anonymous.error)).toBe(5);
    // TLS is not offered on the LAN port, nor plain MQTT on the TLS port.
    const plainOnTls = await connect({ ...lanOpts({ username: "hub", password: pw.hub }), port: tlsPort, connectTimeout: 2000 });
    expect(plainOnTls.client).toBeUndefined();
  });

  it("agrees with the stock client mosquitto_pub on passwords", async () => {
    const hub = await mustConnect(lanOpts({ username: "hub", password: pw.hub }));
    const box = inbox(hub);
    await subscribe(hub, "home/sensors/#");
    const base = ["-h", "127.0.0.1", "-p", String(lanPort), "-q", "1", "-t", "home/sensors/humidity"];
    const ok = await execa("mosquitto_pub", [...base, "-u", "sensors", "-P", pw.sensors!, "-m", "55"], { reject: false, timeout: 10_000 });
    expect(ok.exitCode, redactAll(`${ok.stdout}${ok.stderr}`, Object.values(pw))).toBe(0);
    expect(await box.waitFor("home/sensors/humidity", "55")).toBe(true);
    const bad = await execa("mosquitto_pub", [...base, "-u", "sensors", "-P", `${pw.sensors}-wrong`, "-m", "66"], { reject: false, timeout: 10_000 });
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr).toMatch(/not authori[sz]ed/i);
    await sleep(QUIET_MS);
    expect(box.got.filter((m) => m.payload === "66")).toEqual([]);
  });
});
