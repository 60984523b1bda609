/**
 * MQTT over WebSockets with the rendered configuration in a real mosquitto: the
 * TLS WebSockets listener (same certificate, password file and ACL as MQTT over
 * TLS) and the optional plain one for the home network.
 *
 * The brokers run in network namespaces this test makes: mosquitto 2.0.11's
 * WebSockets listeners (libwebsockets) ignore a bind address and would listen on
 * every address of this host. In a namespace they listen on every address as on
 * the Pi, with the rendered ports unchanged, and only this host reaches them.
 */
import { execa } from "execa";
import type { IClientOptions } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { clients, connect, inbox, mustConnect, startRenderedBroker, subscribe, type RunningBroker } from "./helpers/mosquitto.js";
import { createNetns, type Netns } from "./helpers/host-netns.js";
import { baseConfig, removeAllFixtures, renderFixture, unrelatedCaPem, type Fixture } from "./helpers/render-fixture.js";

const isRoot = process.getuid?.() === 0;

/** What ws hands to tls.connect (its ClientOptions type lacks servername, which it passes on). */
const tlsOptions = (ca: string, servername: string) => ({ ca, servername, rejectUnauthorized: true }) as NonNullable<IClientOptions["wsOptions"]>;

describe.skipIf(!isRoot)("mosquitto serves MQTT over WebSockets as rendered", () => {
  const started: { netns: Netns; running?: RunningBroker }[] = [];
  let withLan: Fixture;
  let tlsOnly: Fixture;
  let lanBroker: RunningBroker;
  let tlsOnlyBroker: RunningBroker;
  let caPem: string;
  let domain: string;
  let pw: Record<string, string>;

  async function startInNamespace(fx: Fixture): Promise<RunningBroker> {
    const entry: (typeof started)[number] = { netns: await createNetns() };
    started.push(entry);
    entry.running = await startRenderedBroker(fx, { netns: entry.netns });
    return entry.running;
  }

  beforeAll(async () => {
    const lanConfig = baseConfig();
    lanConfig.mqtt.websockets = { lan: true };
    withLan = await renderFixture({ config: lanConfig });
    const tlsConfig = baseConfig();
    tlsConfig.mqtt.websockets = {};
    tlsOnly = await renderFixture({ config: tlsConfig });
    pw = withLan.clear.mqtt;
    domain = withLan.model.tls.domain;
    caPem = withLan.overlayText("etc/mosquitto/certs/ca.crt");
    lanBroker = await startInNamespace(withLan);
    tlsOnlyBroker = await startInNamespace(tlsOnly);
  }, 60_000);

  afterEach(async () => {
    await Promise.all([...clients].map((c) => c.endAsync(true).catch(() => undefined)));
    clients.clear();
  });

  afterAll(async () => {
    for (const { netns, running } of started) {
      await running?.broker.stop();
      await netns.remove();
    }
    withLan?.cleanup();
    tlsOnly?.cleanup();
    removeAllFixtures();
  });

  /** A strict client, as a browser is: only ca.crt is trusted, and the name checked is the config's domain. */
  const wss = (b: RunningBroker, extra: IClientOptions = {}): IClientOptions => ({
    protocol: "wss",
    host: b.host,
    port: b.wsTlsPort!,
    path: "/",
    wsOptions: tlsOptions(caPem, domain),
    ...extra,
  });

  it("renders the listeners with the default ports, and the model the firewall reads", () => {
    const conf = withLan.overlayText("etc/mosquitto/conf.d/pibake.conf");
    expect(conf).toMatch(
      /^listener 8884\nprotocol websockets\ncertfile \/etc\/mosquitto\/certs\/server\.crt\nkeyfile \/etc\/mosquitto\/certs\/server\.key\ntls_version tlsv1\.2\n/m,
    );
    expect(conf).toMatch(/^listener 1884\nprotocol websockets\n/m);
    expect(withLan.model.mqtt.websockets).toEqual({ tlsPort: 8884, lanPort: 1884 });
    expect(tlsOnly.model.mqtt.websockets).toEqual({ tlsPort: 8884 });
    expect(tlsOnly.overlayText("etc/mosquitto/conf.d/pibake.conf")).not.toMatch(/^listener 1884$/m);
    expect(lanBroker.broker.log).toContain("Opening websockets listen socket on port 8884.");
    expect(lanBroker.broker.log).toContain("Opening websockets listen socket on port 1884.");
    expect(tlsOnlyBroker.broker.log).toContain("Opening websockets listen socket on port 8884.");
    expect(tlsOnlyBroker.broker.log).not.toContain("port 1884");
  });

  it("round-trips a message over wss:// for a client that trusts only ca.crt and checks the domain", async () => {
    for (const b of [lanBroker, tlsOnlyBroker]) {
      const client = await mustConnect(wss(b, { username: "hub", password: pw.hub }));
      const box = inbox(client);
      await subscribe(client, "browser/check");
      await client.publishAsync("browser/check", "over wss", { qos: 1 });
      expect(await box.waitFor("browser/check", "over wss")).toBe(true);
    }
    expect(lanBroker.broker.log).toMatch(/New client connected from \S+ as \S+ \(p2, c1, k\d+, u'hub'\)/);
    // And it is TLS: plain WebSockets on that port get no CONNACK.
    const plain = await connect({
      protocol: "ws",
      host: lanBroker.host,
      port: lanBroker.wsTlsPort!,
      path: "/",
      username: "hub",
      password: pw.hub,
      connectTimeout: 2000,
    });
    expect(plain.client).toBeUndefined();
  });

  it("applies the same ACL on wss:// as on MQTT over TLS", async () => {
    const phone = await mustConnect(wss(lanBroker, { username: "phone", password: pw.phone }));
    const hub = await mustConnect(wss(lanBroker, { username: "hub", password: pw.hub }));
    const hubBox = inbox(hub);
    await subscribe(hub, "home/#");
    // phone may only read home/sensors/#: dropped; then an allowed publish that must arrive.
    await phone.publishAsync("home/sensors/temp", "forged over wss", { qos: 1 });
    await phone.publishAsync("home/commands/lamp", "allowed over wss", { qos: 1 });
    expect(await hubBox.waitFor("home/commands/lamp", "allowed over wss")).toBe(true);
    expect(hubBox.got.filter((m) => m.payload === "forged over wss")).toEqual([]);
  });

  it("refuses a wrong password and an anonymous client on wss:// with CONNACK 'not authorized'", async () => {
    const wrong = await connect(wss(lanBroker, { username: "hub", password: `${pw.hub}x` }));
    expect(wrong.error?.code, String(wrong.error)).toBe(5);
    expect(wrong.error?.message).toMatch(/not authorized/i);
    const anonymous = await connect(wss(lanBroker));
    expect(anonymous.error?.code, String(anonymous.error)).toBe(5);
  });

  it("fails the TLS check for another name or another CA", async () => {
    const otherName = await connect(wss(lanBroker, { username: "hub", password: pw.hub, wsOptions: tlsOptions(caPem, "other.example.com") }));
    expect(otherName.error?.code, String(otherName.error)).toBe("ERR_TLS_CERT_ALTNAME_INVALID");
    const otherCa = await connect(wss(lanBroker, { username: "hub", password: pw.hub, wsOptions: tlsOptions(await unrelatedCaPem(), domain) }));
    expect(otherCa.error?.code, String(otherCa.error)).toMatch(
      /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/,
    );
  });

  it("round-trips over plain ws:// on the LAN port when mqtt.websockets.lan is true, with logins still required", async () => {
    const opts = (extra: IClientOptions = {}): IClientOptions => ({ protocol: "ws", host: lanBroker.host, port: lanBroker.wsLanPort!, path: "/", ...extra });
    const client = await mustConnect(opts({ username: "hub", password: pw.hub }));
    const box = inbox(client);
    await subscribe(client, "browser/lan");
    await client.publishAsync("browser/lan", "over ws", { qos: 1 });
    expect(await box.waitFor("browser/lan", "over ws")).toBe(true);
    const anonymous = await connect(opts());
    expect(anonymous.error?.code, String(anonymous.error)).toBe(5);
    const wrong = await connect(opts({ username: "hub", password: `${pw.hub}x` }));
    expect(wrong.error?.code, String(wrong.error)).toBe(5);
  });

  it("reports the WebSockets ports in the status report on the boot partition, as ss sees them", async () => {
    const script = withLan.overlayText("usr/local/lib/pibake/status.sh");
    // The report's own helpers and its WebSockets lines, run where the broker listens.
    const lines = script.split("\n");
    const helpers = lines.slice(
      0,
      lines.findIndex((l) => l.startsWith("report() {")),
    );
    expect(helpers.join("\n")).toMatch(/^listening\(\) \{$/m);
    const wsLines = lines.filter((l) => l.includes("WebSockets"));
    expect(wsLines).toHaveLength(2);
    const netns = started.find((e) => e.running === lanBroker)!.netns;
    const r = await execa(netns.exec[0]!, [...netns.exec.slice(1), "bash", "-c", [...helpers, ...wsLines.map((l) => l.trim())].join("\n")], {
      reject: false,
      all: true,
      timeout: 30_000,
    });
    expect(r.all).toBe("  WebSockets TLS port 8884: listening\n  WebSockets LAN port 1884: listening");
    expect(
      tlsOnly
        .overlayText("usr/local/lib/pibake/status.sh")
        .split("\n")
        .filter((l) => l.includes("WebSockets")),
    ).toHaveLength(1);
    const shellcheck = await execa("shellcheck", ["-s", "bash", "-"], { input: script, reject: false, all: true, timeout: 30_000 });
    expect(shellcheck.all).toBe("");
  });

  it("has no plain WebSockets listener when mqtt.websockets.lan is not set", async () => {
    expect(tlsOnlyBroker.wsLanPort).toBeUndefined();
    const r = await connect({ protocol: "ws", host: tlsOnlyBroker.host, port: 1884, path: "/", username: "hub", password: pw.hub, connectTimeout: 2000 });
    expect(r.client).toBeUndefined();
    expect(String(r.error)).toMatch(/ECONNREFUSED/);
  });
});
