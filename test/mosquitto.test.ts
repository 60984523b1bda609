/**
 * The rendered Mosquitto files (conf.d fragment, password file, ACL, server
 * certificate and key) run in a real mosquitto: logins, TLS, ACL rules.
 * The $7$ hashes pibake writes are proven here too: every user logs in with them.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import type { IClientOptions } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { redactAll, removeAllFixtures, renderFixture, tempDir, unrelatedCaPem, type Fixture } from "./helpers/render-fixture.js";
import { clients, connect, inbox, mustConnect, QUIET_MS, sleep, startRenderedBroker, subscribe, type Broker } from "./helpers/mosquitto.js";

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
    ({ broker, root, lanPort, tlsPort } = await startRenderedBroker(fx));
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
    expect(
      passwd
        .trim()
        .split("\n")
        .map((l) => l.replace(/:.*/, "")),
    ).toEqual(expect.arrayContaining(["sensors", "phone", "hub"]));
    for (const line of passwd.trim().split("\n")) expect(line).toMatch(/^[^:]+:\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    for (const secret of Object.values(pw)) expect(passwd).not.toContain(secret);
  });

  it("accepts every user's password ($7$ hash) over TLS, verifying the chain against ca.crt and the name against the domain", async () => {
    for (const user of ["sensors", "phone", "hub"]) {
      const client = await mustConnect(tlsOpts({ username: user, password: pw[user] }));
      const socket = client.stream as unknown as import("node:tls").TLSSocket;
      expect(socket.authorized).toBe(true);
      expect(socket.getProtocol()).toMatch(/^TLSv1\.[23]$/);
    }
    for (const user of ["sensors", "phone", "hub"])
      expect(broker!.log).toMatch(new RegExp(`New client connected from 127\\.0\\.0\\.1:\\d+ as \\S+ \\(p2, c1, k\\d+, u'${user}'\\)`));
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

  it("logs to stderr for the journal: no time stamps, and every connection with its address and port", async () => {
    expect(fx.overlayText("etc/mosquitto/mosquitto.conf")).toMatch(/^log_dest stderr\nlog_timestamp false\nconnection_messages true$/m);
    await mustConnect(lanOpts({ username: "hub", password: pw.hub }));
    await connect(tlsOpts({ username: "phone", password: `${pw.phone}x` }));
    const lines = broker!.log.split("\n");
    // journald stamps each line itself; a second time stamp would only cost space. (While it
    // reads its config files mosquitto has not yet taken log_timestamp in: "Loading config file".)
    const started = lines.findIndex((l) => /^mosquitto version \S+ starting$/.test(l));
    expect(started, broker!.log).toBeGreaterThan(0);
    expect(lines.slice(started).filter((l) => /^\d{10}: /.test(l))).toEqual([]);
    // What a ban on password guessers reads from the journal (mosquitto.service's lines).
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^New connection from 127\\.0\\.0\\.1:\\d+ on port ${lanPort}\\.$`))]));
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^New connection from 127\\.0\\.0\\.1:\\d+ on port ${tlsPort}\\.$`))]));
    expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(/^Client \S+ disconnected, not authorised\.$/)]));
  });

  it("round-trips an MQTT v5 message over TLS with a user property and a message expiry, read back on the subscriber", async () => {
    const v5 = (user: string) => tlsOpts({ username: user, password: pw[user], protocolVersion: 5 });
    const sub = await mustConnect(v5("hub"));
    const pub = await mustConnect(v5("phone"));
    expect(sub.options.protocolVersion).toBe(5);
    const got = new Promise<{ payload: string; properties: Record<string, unknown> | undefined }>((resolve) =>
      sub.on("message", (topic, payload, packet) => {
        if (topic === "home/commands/v5") resolve({ payload: payload.toString(), properties: packet.properties as Record<string, unknown> | undefined });
      }),
    );
    expect(await subscribe(sub, "home/commands/v5")).toBe(1);
    await pub.publishAsync("home/commands/v5", "with properties", {
      qos: 1,
      properties: { userProperties: { origin: "pibake-test" }, messageExpiryInterval: 3600 },
    });
    const m = await Promise.race([got, sleep(5000).then(() => undefined)]);
    expect(m, "no message within 5 s").toBeDefined();
    expect(m!.payload).toBe("with properties");
    expect(m!.properties?.userProperties).toEqual({ origin: "pibake-test" });
    // The broker forwards what is left of the expiry: at most the 3600 s given, and not much less.
    expect(m!.properties?.messageExpiryInterval).toBeGreaterThan(3590);
    expect(m!.properties?.messageExpiryInterval).toBeLessThanOrEqual(3600);
    expect(broker!.log).toMatch(/New client connected from 127\.0\.0\.1:\d+ as \S+ \(p5, c1, k\d+, u'phone'\)/);
  });

  it("refuses an MQTT v5 client with a wrong password with the CONNACK reason code mosquitto sends", async () => {
    const wrong = await connect(tlsOpts({ username: "phone", password: `${pw.phone}x`, protocolVersion: 5 }));
    const anonymous = await connect(tlsOpts({ protocolVersion: 5 }));
    expect({ code: wrong.error?.code, message: wrong.error?.message }).toEqual({ code: 135, message: "Connection refused: Not authorized" });
    expect({ code: anonymous.error?.code, message: anonymous.error?.message }).toEqual({ code: 135, message: "Connection refused: Not authorized" });
    expect(broker!.log).toMatch(/Sending CONNACK to 127\.0\.0\.1 \(0, 135\)/);
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
