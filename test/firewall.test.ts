/**
 * The rendered /etc/nftables.conf, loaded with the real `nft -f` into a
 * network namespace standing for the Pi, with a real mosquitto running the
 * rendered config behind it and plain listeners for SSH and Node-RED. A client
 * on the home network and one on the Internet (their own namespaces) try every
 * port; the verdicts must follow firewall.lan, and the limit on new
 * connections must stop a flood without touching an established session.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";
import {
  INTERNET_PEER,
  LAN_PEER,
  layOutMosquitto,
  loadRuleset,
  makeTopology,
  NetnsBroker,
  netnsUnavailable,
  PI_LAN,
  PI_WAN,
  probe,
  ProbeProcess,
  type Topology,
} from "./helpers/netns.js";
import { firewallPorts, NEW_CONNECTION_LIMIT } from "../src/render/firewall.js";

const unavailable = await netnsUnavailable();
/** A dropped SYN is given this long to be answered anyway; a connection through the firewall takes milliseconds. */
const DROP_MS = 700;

/** nft -c (check only, nothing loaded) on a rendered ruleset; needs no namespace. */
async function nftCheck(text: string): Promise<{ exitCode: number | undefined; stderr: string }> {
  const dir = tempDir("pibake-nft-");
  const file = path.join(dir, "nftables.conf");
  writeFileSync(file, text);
  const r = await execa("nft", ["-c", "-f", file], { reject: false, timeout: 20_000 });
  return { exitCode: r.exitCode, stderr: r.stderr };
}

describe.skipIf(unavailable !== undefined)(`firewall in network namespaces${unavailable ? ` (skipped: ${unavailable})` : ""}`, () => {
  let fx: Fixture;
  let topo: Topology | undefined;
  let broker: NetnsBroker | undefined;
  let listeners: ProbeProcess | undefined;
  let rulesFile: string;
  let caPem: string;
  const held: ProbeProcess[] = [];

  beforeAll(async () => {
    fx = await renderFixture({ config: baseConfig() });
    caPem = fx.overlayText("etc/mosquitto/certs/ca.crt");
    const root = tempDir("pibake-fw-");
    rulesFile = path.join(root, "nftables.conf");
    writeFileSync(rulesFile, fx.overlayFile("etc/nftables.conf"));
    topo = await makeTopology("fw");
    await loadRuleset(topo, topo.pi, rulesFile);
    broker = new NetnsBroker(topo.pi, layOutMosquitto(fx.rendered.overlay, root));
    await broker.waitForLog(/mosquitto version \S+ running/, 10_000);
    listeners = new ProbeProcess(topo.pi, { op: "listen", ports: [22, fx.model.nodeRed!.port] });
    expect(await listeners.next(10_000)).toBe("listening");
  }, 60_000);

  afterAll(async () => {
    for (const p of held) await p.stop();
    await listeners?.stop();
    await broker?.stop();
    await topo?.destroy();
    removeAllFixtures();
  });

  const tcp = (ns: string, host: string, port: number, extra: Record<string, unknown> = {}) =>
    probe(topo!, ns, { op: "tcp", host, port, timeoutMs: DROP_MS, ...extra }).then((r) => r[0]);
  const mqttLogin = (ns: string, host: string, port: number, tls: boolean, extra: Record<string, unknown> = {}) =>
    probe(topo!, ns, {
      op: "mqtt",
      url: `${tls ? "mqtts" : "mqtt"}://${host.includes(":") ? `[${host}]` : host}:${port}`,
      username: "hub",
      password: fx.clear.mqtt.hub,
      timeoutMs: 5_000,
      ...(tls ? { ca: caPem, servername: fx.model.tls.domain } : {}),
      ...extra,
    }).then((r) => r[0]);

  it("loads with nft -f and reads back as pibake's own table", async () => {
    const r = await topo!.run(topo!.pi, "nft", ["list", "table", "inet", "pibake"]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain("policy drop");
    expect(r.stdout).toMatch(/elements = \{ 192\.168\.50\.0\/24 \}/);
  });

  it("lets the Internet reach only the TLS port: an MQTT login over TLS works, 1883, 22 and 1880 are dropped", async () => {
    expect(await mqttLogin(topo!.inet, PI_WAN.v4, fx.model.mqtt.tlsPort, true)).toBe("connected");
    for (const port of [fx.model.mqtt.lanPort, 22, fx.model.nodeRed!.port]) {
      expect(await tcp(topo!.inet, PI_WAN.v4, port), `Internet → ${port}`).toBe("timeout");
    }
  });

  it("lets the home network reach every service: MQTT plain and TLS, SSH, Node-RED", async () => {
    expect(await mqttLogin(topo!.lan, PI_LAN.v4, fx.model.mqtt.lanPort, false)).toBe("connected");
    expect(await mqttLogin(topo!.lan, PI_LAN.v4, fx.model.mqtt.tlsPort, true)).toBe("connected");
    for (const port of [22, fx.model.nodeRed!.port]) expect(await tcp(topo!.lan, PI_LAN.v4, port), `LAN → ${port}`).toBe("connected");
    // A port nobody opened is answered with a reset on the home network, not left to time out.
    expect(await tcp(topo!.lan, PI_LAN.v4, 9999)).toBe("refused");
  });

  it("treats IPv6 the same: a unique-local client is home, a global one is the Internet", async () => {
    expect(await mqttLogin(topo!.lan, PI_LAN.v6, fx.model.mqtt.lanPort, false)).toBe("connected");
    expect(await tcp(topo!.lan, PI_LAN.v6, 22)).toBe("connected");
    expect(await mqttLogin(topo!.inet, PI_WAN.v6, fx.model.mqtt.tlsPort, true)).toBe("connected");
    for (const port of [fx.model.mqtt.lanPort, 22]) expect(await tcp(topo!.inet, PI_WAN.v6, port), `Internet (IPv6) → ${port}`).toBe("timeout");
    // Neighbour discovery passed the firewall, or none of the above would have connected; ping too.
    const ping = await topo!.run(topo!.inet, "ping", ["-6", "-c", "1", "-W", "2", PI_WAN.v6]);
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
  });

  it(`stops a flood of new TLS connections from one address after ${NEW_CONNECTION_LIMIT.burst}, while an established session goes on and other addresses still connect`, async () => {
    // A second Internet address, whose budget the tests above have not spent.
    const flooder = INTERNET_PEER.v4b;
    const session = new ProbeProcess(topo!.inet, {
      op: "mqtt-hold",
      url: `mqtts://${PI_WAN.v4}:${fx.model.mqtt.tlsPort}`,
      username: "hub",
      password: fx.clear.mqtt.hub,
      ca: caPem,
      servername: fx.model.tls.domain,
      localAddress: flooder,
      timeoutMs: 5_000,
    });
    held.push(session);
    expect(await session.next(10_000)).toBe("connected");
    const attempts = NEW_CONNECTION_LIMIT.burst + 5;
    const results = await probe(topo!, topo!.inet, {
      op: "tcp",
      host: PI_WAN.v4,
      port: fx.model.mqtt.tlsPort,
      count: attempts,
      timeoutMs: DROP_MS,
      localAddress: flooder,
    });
    const connected = results.filter((r) => r === "connected").length;
    // The session's own connection was the first of the burst.
    expect(connected, results.join(" ")).toBeGreaterThanOrEqual(NEW_CONNECTION_LIMIT.burst - 1);
    expect(connected, results.join(" ")).toBeLessThanOrEqual(NEW_CONNECTION_LIMIT.burst + 1);
    expect(results.slice(-3), results.join(" ")).toEqual(["timeout", "timeout", "timeout"]);
    session.send("roundtrip");
    expect(await session.next(8_000)).toBe("ok");
    expect(await tcp(topo!.inet, PI_WAN.v4, fx.model.mqtt.tlsPort, { localAddress: INTERNET_PEER.v4 })).toBe("connected");
    // The home network is not limited.
    const home = await probe(topo!, topo!.lan, { op: "tcp", host: PI_LAN.v4, port: fx.model.mqtt.tlsPort, count: attempts, timeoutMs: DROP_MS });
    expect(home).toEqual(Array(attempts).fill("connected"));
    const counter = await topo!.run(topo!.pi, "nft", ["list", "chain", "inet", "pibake", "input"]);
    expect(counter.stdout).toMatch(/new_internet4 .* counter packets [1-9]\d* /);
  });

  it("counts new IPv6 connections per /64: another address of the same /64 shares the limit", async () => {
    await topo!.run(topo!.inet, "ip", ["addr", "add", "2001:db8:113::8/64", "dev", "eth0", "nodad"]);
    const results = await probe(topo!, topo!.inet, {
      op: "tcp",
      host: PI_WAN.v6,
      port: fx.model.mqtt.tlsPort,
      count: NEW_CONNECTION_LIMIT.burst + 3,
      timeoutMs: DROP_MS,
      localAddress: "2001:db8:113::8",
    });
    // The IPv6 test above spent one of this /64's budget from 2001:db8:113::7.
    expect(results.filter((r) => r === "connected").length, results.join(" ")).toBeLessThanOrEqual(NEW_CONNECTION_LIMIT.burst);
    expect(results.slice(-3), results.join(" ")).toEqual(["timeout", "timeout", "timeout"]);
    expect(await tcp(topo!.inet, PI_WAN.v6, fx.model.mqtt.tlsPort, { localAddress: INTERNET_PEER.v6 })).toBe("timeout");
  });

  it("follows firewall.lan: another network becomes home and the Pi's own subnet does not", async () => {
    const other = await renderFixture({ config: { ...baseConfig(), firewall: { lan: ["10.9.0.0/16"] } } });
    const file = path.join(path.dirname(rulesFile), "nftables-other.conf");
    writeFileSync(file, other.overlayFile("etc/nftables.conf"));
    await topo!.run(topo!.pi, "ip", ["addr", "add", "10.9.0.10/16", "dev", "lan0"]);
    await topo!.run(topo!.lan, "ip", ["addr", "add", "10.9.0.50/16", "dev", "eth0"]);
    try {
      // Loaded over the first: the file replaces pibake's table, whatever is loaded.
      await loadRuleset(topo!, topo!.pi, file);
      const tables = await topo!.run(topo!.pi, "nft", ["list", "tables"]);
      expect(tables.stdout.trim().split("\n")).toEqual(["table inet pibake"]);
      expect(await tcp(topo!.lan, "10.9.0.10", fx.model.mqtt.lanPort, { localAddress: "10.9.0.50" })).toBe("connected");
      expect(await tcp(topo!.lan, "10.9.0.10", 22, { localAddress: "10.9.0.50" })).toBe("connected");
      expect(await tcp(topo!.lan, PI_LAN.v4, fx.model.mqtt.lanPort, { localAddress: LAN_PEER.v4 })).toBe("timeout");
      expect(await tcp(topo!.lan, PI_LAN.v4, 22, { localAddress: LAN_PEER.v4 })).toBe("timeout");
      expect(await tcp(topo!.lan, PI_LAN.v4, fx.model.mqtt.tlsPort, { localAddress: LAN_PEER.v4 })).toBe("connected");
    } finally {
      await loadRuleset(topo!, topo!.pi, rulesFile);
    }
    expect(await tcp(topo!.lan, PI_LAN.v4, 22)).toBe("connected");
  });
});

describe("firewall as rendered", () => {
  afterAll(removeAllFixtures);

  it("with firewall.enabled false installs no ruleset, no fail2ban jail and neither package, and the stage turns both services off", async () => {
    const fx = await renderFixture({ config: { ...baseConfig(), firewall: { enabled: false } } });
    expect(fx.rendered.overlay.filter((f) => /nftables|fail2ban/.test(f.path))).toEqual([]);
    const packages = fx.stageText("00-broker/00-packages-nr");
    expect(packages).not.toMatch(/nftables|fail2ban/);
    const script = fx.stageText("00-broker/02-run-chroot.sh");
    expect(script).not.toMatch(/systemctl enable .*nftables/);
    expect(script).toMatch(/for unit in nftables\.service fail2ban\.service/);
    // Read back by bash: the loop disables exactly those two units.
    const r = await execa("bash", [
      "-c",
      `systemctl() { echo "systemctl $*"; }; ${script.slice(script.indexOf("for unit in"), script.indexOf("done", script.indexOf("for unit in")) + 4)}`,
    ]);
    expect(r.stdout.split("\n").filter((l) => l.includes("disable"))).toEqual(["systemctl disable nftables.service", "systemctl disable fail2ban.service"]);
  });

  it("computes every open port in one place, with a reason each", async () => {
    const config = baseConfig();
    config.mqtt.lanPort = 11883;
    config.mqtt.tlsPort = 18883;
    config.nodeRed = { port: 11880 };
    const on = firewallPorts((await renderFixture({ config })).model);
    expect(on.internet.map((p) => [p.port, p.protocol, p.fail2ban])).toEqual([[18883, "tcp", true]]);
    expect(on.lan.map((p) => [p.port, p.protocol])).toEqual([
      [11883, "tcp"],
      [22, "tcp"],
      [11880, "tcp"],
      [5353, "udp"],
    ]);
    for (const p of [...on.internet, ...on.lan]) expect(p.reason).not.toBe("");
    const off = firewallPorts((await renderFixture({ config: { ...baseConfig(), nodeRed: { enabled: false } } })).model);
    expect(off.lan.map((p) => p.port)).toEqual([1883, 22, 5353]);
    // WebSockets: the TLS listener is open to the Internet (no fail2ban: mosquitto logs no address for it), the plain one to the LAN.
    const ws = firewallPorts(
      (await renderFixture({ config: { ...baseConfig(), nodeRed: { enabled: false }, mqtt: { ...baseConfig().mqtt, websockets: { lan: true } } } })).model,
    );
    expect(ws.internet.map((p) => [p.port, p.fail2ban])).toEqual([
      [8883, true],
      [8884, false],
    ]);
    expect(ws.lan.map((p) => p.port)).toEqual([1883, 1884, 22, 5353]);
    const rendered = (
      await renderFixture({ config: { ...baseConfig(), nodeRed: { enabled: false }, mqtt: { ...baseConfig().mqtt, websockets: {} } } })
    ).overlayText("etc/nftables.conf");
    expect(rendered).toMatch(/8884/);
  });

  it.each([
    ["192.168.50.10/24", "192.168.50.0/24"],
    ["10.1.2.3/8", "10.0.0.0/8"],
    ["172.16.5.77/20", "172.16.0.0/20"],
  ])("takes the Pi's own subnet as the home network by default: %s → %s", async (address, lan) => {
    const gateway = address.replace(/\.\d+\/\d+$/, ".1");
    const fx = await renderFixture({ config: { ...baseConfig(), network: { ...baseConfig().network, address, gateway } } });
    expect(fx.model.firewall?.lan).toEqual([lan]);
    expect(fx.overlayText("etc/nftables.conf")).toContain(`elements = { ${lan} }`);
  });

  it("by default installs nftables and fail2ban and enables both", async () => {
    const fx = await renderFixture({ config: baseConfig() });
    expect(fx.stageText("00-broker/00-packages-nr").split("\n")).toEqual(expect.arrayContaining(["nftables", "fail2ban", "python3-systemd"]));
    expect(fx.stageText("00-broker/02-run-chroot.sh")).toMatch(/^systemctl enable nftables\.service fail2ban\.service$/m);
    expect(fx.rendered.overlay.find((f) => f.path === "etc/nftables.conf")?.mode).toBe(0o755);
  });

  it.skipIf(process.getuid?.() !== 0)(
    "passes nft -c for hostile but valid configs: overlapping and duplicate networks, /32 hosts, extreme ports, Node-RED off",
    async () => {
      const cases: Record<string, any>[] = [
        { firewall: { lan: ["192.168.0.0/16", "192.168.50.0/24", "192.168.50.0/24", "10.0.0.1/32", "255.255.255.255/32", "0.0.0.0/8"] } },
        { mqtt: { ...baseConfig().mqtt, lanPort: 1, tlsPort: 65535 }, nodeRed: { port: 65534 } },
        { nodeRed: { enabled: false } },
        { network: { ...baseConfig().network, address: "10.1.2.3/8", gateway: "10.0.0.1" } },
      ];
      for (const change of cases) {
        const fx = await renderFixture({ config: { ...baseConfig(), ...change } });
        const r = await nftCheck(fx.overlayText("etc/nftables.conf"));
        expect(r.exitCode, `${JSON.stringify(change)}: ${r.stderr}`).toBe(0);
      }
    },
  );
});
