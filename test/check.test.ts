/**
 * pibake check, through the real CLI, against a real mosquitto running the
 * rendered configuration on free loopback ports, a DNS responder and an
 * ipLookup service of the test's own on 127.0.0.1. Each fault the check is
 * meant to find is made for real (another CA, an expiring or expired
 * certificate signed by the state's CA, nothing listening, NXDOMAIN,
 * allow_anonymous true, a server that accepts TLS 1.1, an address that never answers).
 */
import { createServer, type Server } from "node:http";
import { chmodSync, readFileSync, writeFileSync, cpSync, mkdirSync } from "node:fs";
import { createServer as createTlsServer } from "node:tls";
import path from "node:path";
import forge from "node-forge";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { execa } from "execa";
import { bin, pibake, repoRoot } from "./helpers/cli.js";
import { Broker, START_TIMEOUT_MS, startRenderedBroker, type RunningBroker } from "./helpers/mosquitto.js";
import { freePort } from "./helpers/net.js";
import {
  baseConfig,
  DEFAULT_SECRET_ENV,
  TEST_SSH_KEYS,
  redactAll,
  removeAllFixtures,
  renderFixture,
  tempDir,
  unrelatedCaPem,
  type Fixture,
} from "./helpers/render-fixture.js";
import { startDnsServer, type DnsServer } from "./helpers/dns-server.js";
import { startServer } from "./helpers/server.js";

interface Line {
  name: string;
  status: "ok" | "warning" | "failed";
  detail: string;
  fix?: string;
}
interface Report {
  host: string;
  ok: boolean;
  failed: number;
  warnings: number;
  checks: Line[];
}

const DOMAIN = "pibake-test.freemyip.com";
const MISSING = "missing.freemyip.com";
/** The CLI's own bound (25 s) must fire before this. */
const CLI_TIMEOUT_MS = 40_000;

describe("pibake check", () => {
  let fx: Fixture;
  let dns: DnsServer;
  let ipLookup: Server;
  let ipLookupPort: number;
  /** What the ipLookup service answers: the WAN address "seen from here". */
  let wanAnswer = "127.0.0.1";

  beforeAll(async () => {
    ipLookupPort = await freePort();
    ipLookup = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(wanAnswer);
    });
    await new Promise<void>((resolve) => ipLookup.listen(ipLookupPort, "127.0.0.1", resolve));
    dns = await startDnsServer({ [DOMAIN]: "127.0.0.1" });
    const config = baseConfig();
    // The static address is the loopback, so that --lan reaches the test's broker.
    config.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] };
    config.ddns.ipLookup = `http://127.0.0.1:${ipLookupPort}/`;
    config.nodeRed = { enabled: false };
    fx = await renderFixture({ config });
  }, 60_000);

  afterAll(async () => {
    await dns?.close();
    await new Promise<void>((resolve) => (ipLookup ? ipLookup.close(() => resolve()) : resolve()));
    fx?.cleanup();
    removeAllFixtures();
  });

  const secrets = () => Object.values(DEFAULT_SECRET_ENV);

  async function check(args: string[], opts: { state?: string; dnsPort?: number; env?: Record<string, string> } = {}) {
    const started = Date.now();
    const r = await pibake(
      ["check", fx.configPath, "--state", opts.state ?? fx.state.dir, "--dns-server", `127.0.0.1:${opts.dnsPort ?? dns.port}`, "--timeout", "3", ...args],
      {
        env: opts.env ?? DEFAULT_SECRET_ENV,
        timeout: CLI_TIMEOUT_MS,
      },
    );
    const output = `${r.stdout}\n${r.stderr}`;
    for (const s of secrets()) expect(output, "a secret was printed").not.toContain(s);
    return { r, ms: Date.now() - started, output: redactAll(output, secrets()) };
  }

  async function checkJson(args: string[], opts: { state?: string; dnsPort?: number; env?: Record<string, string> } = {}) {
    const { r, ms, output } = await check([...args, "--json"], opts);
    let report: Report;
    try {
      report = JSON.parse(String(r.stdout)) as Report;
    } catch {
      throw new Error(`--json did not print one JSON object (exit ${r.exitCode}):\n${output}`);
    }
    const line = (name: string) => {
      const l = report.checks.find((c) => c.name === name);
      if (!l) throw new Error(`no "${name}" line in:\n${JSON.stringify(report.checks, null, 2)}`);
      return l;
    };
    return { r, ms, output, report, line };
  }

  /** A broker with the rendered files, optionally changed under its root and restarted; always stopped. */
  async function withBroker(edit: ((root: string) => void) | undefined, body: (b: RunningBroker) => Promise<void>, rendered: Fixture = fx): Promise<void> {
    let running: RunningBroker | undefined;
    let restarted: Broker | undefined;
    try {
      running = await startRenderedBroker(rendered);
      if (edit) {
        await running.broker.stop();
        edit(running.root);
        restarted = new Broker(path.join(running.root, "etc/mosquitto/mosquitto.conf"));
        await restarted.waitForLog(/mosquitto version \S+ running/, START_TIMEOUT_MS);
        running = { ...running, broker: restarted };
      }
      await body(running);
    } finally {
      await running?.broker.stop();
      await restarted?.stop();
    }
  }

  /** A server certificate for the broker's key, signed by the state directory's CA, valid between the given days from now. */
  function serverCert(fromDays: number, toDays: number): string {
    const caCert = forge.pki.certificateFromPem(readFileSync(fx.state.file("ca.crt"), "utf8"));
    const caKey = forge.pki.privateKeyFromPem(readFileSync(fx.state.file("ca.key"), "utf8"));
    const key = forge.pki.privateKeyFromPem(readFileSync(fx.state.file("server.key"), "utf8"));
    const cert = forge.pki.createCertificate();
    cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
    cert.serialNumber = "0a1b2c3d";
    const day = 86_400_000;
    cert.validity.notBefore = new Date(Date.now() + fromDays * day);
    cert.validity.notAfter = new Date(Date.now() + toDays * day);
    cert.setSubject([{ name: "commonName", value: DOMAIN }]);
    cert.setIssuer(caCert.subject.attributes);
    cert.setExtensions([
      { name: "basicConstraints", cA: false },
      { name: "extKeyUsage", serverAuth: true },
      { name: "subjectAltName", altNames: [{ type: 2, value: DOMAIN }] },
    ]);
    cert.sign(caKey, forge.md.sha256.create());
    return forge.pki.certificateToPem(cert);
  }

  it("passes on a correct setup: every line ok, exit 0, the same as --json", async () => {
    await withBroker(undefined, async ({ tlsPort, broker }) => {
      const { r, output, report, line } = await checkJson(["--port-tls", String(tlsPort)]);
      expect(r.exitCode, output).toBe(0);
      expect(report.ok).toBe(true);
      expect(report.host).toBe(DOMAIN);
      expect(
        report.checks.filter((c) => c.status !== "ok"),
        output,
      ).toEqual([]);
      expect(report.checks.map((c) => c.name)).toEqual([
        "tls connect",
        "tls chain",
        "tls name",
        "tls version",
        "certificate expiry",
        "certificate origin",
        "mqtts anonymous",
        "mqtts wrong password",
        "mqtts round trip",
        "dns",
        "wan address",
      ]);
      // TLS 1.2 minimum: the server refused the TLS 1.1 handshake with a protocol_version alert.
      expect(line("tls version").detail).toMatch(/TLS 1\.1 handshake is refused .*alert protocol version/);
      expect(line("certificate expiry").detail).toMatch(/\(8\d\d days left\)/);
      expect(line("dns").detail).toContain(`${DOMAIN} resolves to 127.0.0.1`);
      // phone has readwrite on home/commands/+: the message went through the broker's ACL.
      expect(line("mqtts round trip").detail).toMatch(/^phone: a message on home\/commands\/pibake-check arrived/);
      expect(broker.log).toMatch(/u'phone'/);
      expect(broker.log).toMatch(/Sending CONNACK to \S+ \(0, 5\)/);
      expect(dns.queries).toContain(`${DOMAIN} 1`);

      // The plain form: one line per check, and a summary.
      const plain = await check(["--port-tls", String(tlsPort)]);
      expect(plain.r.exitCode, plain.output).toBe(0);
      expect(String(plain.r.stdout)).toMatch(/^ok {7}tls chain +verified against .*ca\.crt \(only that CA trusted\)$/m);
      expect(String(plain.r.stdout)).toMatch(/^all passed$/m);
    });
  });

  it("--lan checks the static address: the LAN listener too (login and anonymous refused), and no DNS", async () => {
    await withBroker(undefined, async ({ tlsPort, lanPort }) => {
      const { r, output, report, line } = await checkJson(["--lan", "--port-tls", String(tlsPort), "--port-lan", String(lanPort)]);
      expect(r.exitCode, output).toBe(0);
      expect(report.host).toBe("127.0.0.1");
      expect(line("lan anonymous").status).toBe("ok");
      expect(line("lan wrong password").status).toBe("ok");
      expect(line("lan round trip").status).toBe("ok");
      expect(report.checks.some((c) => c.name === "dns")).toBe(false);
    });
  });

  it("checks MQTT over WebSockets with TLS on --port-ws (mosquitto's websockets listener)", async () => {
    const wsPort = await freePort();
    const addWebsockets = (root: string) => {
      const conf = path.join(root, "etc/mosquitto/conf.d/pibake.conf");
      const certs = path.join(root, "etc/mosquitto/certs");
      const listener = [
        `listener ${wsPort} 127.0.0.1`,
        "protocol websockets",
        `certfile ${certs}/server.crt`,
        `keyfile ${certs}/server.key`,
        "tls_version tlsv1.2",
        "",
      ];
      writeFileSync(conf, readFileSync(conf, "utf8") + "\n" + listener.join("\n"));
    };
    await withBroker(addWebsockets, async ({ tlsPort, broker }) => {
      expect(broker.log).toContain(`Opening websockets listen socket on port ${wsPort}.`);
      const { r, output, line } = await checkJson(["--port-tls", String(tlsPort), "--port-ws", String(wsPort)]);
      expect(r.exitCode, output).toBe(0);
      for (const name of ["wss anonymous", "wss wrong password", "wss round trip"]) expect(line(name).status, name).toBe("ok");
    });
    // Nothing listening there: named, and a failure.
    const closed = await freePort();
    await withBroker(undefined, async ({ tlsPort }) => {
      const { r, line } = await checkJson(["--port-tls", String(tlsPort), "--port-ws", String(closed)]);
      expect(r.exitCode).toBe(1);
      expect(line("wss connect").detail).toMatch(/refused/);
    });
  });

  it("sends the test message from a write-only user to a read-only user when no user may do both (through the broker's ACL)", async () => {
    const config = baseConfig();
    config.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] };
    config.nodeRed = { enabled: false };
    delete config.ddns;
    config.mqtt.users = [
      { name: "sensors", password: { env: "PIBAKE_TEST_MQTT_SENSORS" }, topics: [{ access: "write", topic: "home/sensors/#" }] },
      { name: "phone", password: { env: "PIBAKE_TEST_MQTT_PHONE" }, topics: [{ access: "read", topic: "home/#" }] },
    ];
    const pair = await renderFixture({ config });
    try {
      await withBroker(
        undefined,
        async ({ lanPort, tlsPort }) => {
          const r = await pibake(
            [
              "check",
              pair.configPath,
              "--lan",
              "--state",
              pair.state.dir,
              "--port-tls",
              String(tlsPort),
              "--port-lan",
              String(lanPort),
              "--timeout",
              "3",
              "--json",
            ],
            { env: DEFAULT_SECRET_ENV, timeout: CLI_TIMEOUT_MS },
          );
          const report = JSON.parse(String(r.stdout)) as Report;
          expect(r.exitCode, JSON.stringify(report.checks, null, 2)).toBe(0);
          for (const name of ["mqtts round trip", "lan round trip"]) {
            expect(report.checks.find((c) => c.name === name)?.detail).toMatch(
              /^sensors → phone: a message on home\/sensors\/pibake-check\/[0-9a-f]{8} arrived/,
            );
          }
        },
        pair,
      );
    } finally {
      pair.cleanup();
    }
  });

  it("fails the round trip when the config's password is not the one the broker has (the config changed since the build)", async () => {
    await withBroker(undefined, async ({ tlsPort }) => {
      const env = { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_MQTT_PHONE: "phone-Changed-since-build" };
      const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)], { env });
      expect(output).not.toContain(env.PIBAKE_TEST_MQTT_PHONE);
      expect(r.exitCode, output).toBe(1);
      expect(line("mqtts round trip").status).toBe("failed");
      expect(line("mqtts round trip").detail).toMatch(/^phone could not log in with the config's password/);
      expect(line("mqtts round trip").fix).toMatch(/build a new image \(pibake build /);
    });
  });

  it("fails the chain and the origin when the state directory holds another CA", async () => {
    await withBroker(undefined, async ({ tlsPort }) => {
      const other = tempDir("pibake-check-other-state-");
      const otherCa = await unrelatedCaPem();
      writeFileSync(path.join(other, "ca.crt"), otherCa);
      const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)], { state: other });
      expect(r.exitCode, output).toBe(1);
      expect(line("tls chain").status).toBe("failed");
      expect(line("tls chain").detail).toMatch(/not signed by the CA in .*ca\.crt \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/);
      expect(line("tls chain").fix).toMatch(/--state/);
      // No server.crt there to compare with.
      expect(line("certificate origin").status).toBe("warning");
      expect(line("mqtts").detail).toMatch(/^not tried/);
      // With a server certificate of its own there: the broker reached is another machine.
      writeFileSync(path.join(other, "server.crt"), otherCa);
      const again = await checkJson(["--port-tls", String(tlsPort)], { state: other });
      expect(again.r.exitCode).toBe(1);
      expect(again.line("certificate origin").status).toBe("failed");
      expect(again.line("certificate origin").detail).toMatch(/you reached another machine/);
    });
  });

  it("warns about a server certificate that expires within 30 days, naming pibake build, and fails an expired one", async () => {
    await withBroker(
      (root) => writeFileSync(path.join(root, "etc/mosquitto/certs/server.crt"), serverCert(-1, 10)),
      async ({ tlsPort }) => {
        const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)]);
        expect(r.exitCode, output).toBe(0);
        expect(line("certificate expiry").status).toBe("warning");
        expect(line("certificate expiry").detail).toMatch(/\((9|10) days left\)/);
        expect(line("certificate expiry").fix).toContain(`pibake build ${path.relative(process.cwd(), fx.configPath)}`);
        // Signed by the same CA, but not the certificate the state directory holds now.
        expect(line("certificate origin").status).toBe("warning");
        expect(line("mqtts round trip").status).toBe("ok");
      },
    );
    await withBroker(
      (root) => writeFileSync(path.join(root, "etc/mosquitto/certs/server.crt"), serverCert(-40, -1)),
      async ({ tlsPort }) => {
        const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)]);
        expect(r.exitCode, output).toBe(1);
        expect(line("tls chain").detail).toMatch(/expired \(CERT_HAS_EXPIRED\)/);
        expect(line("certificate expiry").status).toBe("failed");
        expect(line("certificate expiry").fix).toMatch(/pibake build/);
      },
    );
  });

  it("fails anonymous access when the broker allows it (allow_anonymous true)", async () => {
    const allowAnonymous = (root: string) => {
      const conf = path.join(root, "etc/mosquitto/conf.d/pibake.conf");
      const text = readFileSync(conf, "utf8");
      expect(text).toMatch(/^allow_anonymous false$/m);
      writeFileSync(conf, text.replace(/^allow_anonymous false$/m, "allow_anonymous true"));
    };
    await withBroker(allowAnonymous, async ({ tlsPort, lanPort }) => {
      const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)]);
      expect(r.exitCode, output).toBe(1);
      expect(line("mqtts anonymous").status).toBe("failed");
      expect(line("mqtts anonymous").fix).toMatch(/allow_anonymous false/);
      expect(line("mqtts round trip").status).toBe("ok");
      const lan = await checkJson(["--lan", "--port-tls", String(tlsPort), "--port-lan", String(lanPort)]);
      expect(lan.r.exitCode).toBe(1);
      expect(lan.line("lan anonymous").status).toBe("failed");
    });
  });

  it("fails the TLS version check against a server that accepts TLS 1.1 (Node's TLS with the broker's own certificate)", async () => {
    const port = await freePort();
    const server = createTlsServer({
      key: readFileSync(fx.state.file("server.key")),
      cert: readFileSync(fx.state.file("server.crt")),
      minVersion: "TLSv1.1",
      ciphers: "DEFAULT@SECLEVEL=0",
    });
    server.on("secureConnection", (s) => s.end());
    server.on("tlsClientError", () => undefined);
    try {
      await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
      const { r, output, line } = await checkJson(["--port-tls", String(port)]);
      expect(r.exitCode, output).toBe(1);
      expect(line("tls chain").status).toBe("ok");
      expect(line("tls version").status).toBe("failed");
      expect(line("tls version").detail).toMatch(/also accepted TLSv1\.1/);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it("names a refused port and fails with exit 1", async () => {
    const port = await freePort();
    const { r, output, line } = await checkJson(["--port-tls", String(port)]);
    expect(r.exitCode, output).toBe(1);
    expect(line("tls connect").status).toBe("failed");
    expect(line("tls connect").detail).toMatch(new RegExp(`^${DOMAIN.replaceAll(".", "\\.")}:${port}: refused \\(.*ECONNREFUSED`));
    expect(line("tls connect").fix).toMatch(/nothing listens/);
  });

  it("fails DNS for a name the DNS server does not know (NXDOMAIN), and says nothing else was tried", async () => {
    const missingDns = await startDnsServer({ [MISSING]: "127.0.0.1" });
    try {
      const { r, output, line } = await checkJson([], { dnsPort: missingDns.port });
      expect(r.exitCode, output).toBe(1);
      expect(line("dns").status).toBe("failed");
      expect(line("dns").detail).toMatch(/does not resolve \(asked 127\.0\.0\.1:\d+\): the name does not exist \(NXDOMAIN\)/);
      expect(line("dns").fix).toMatch(/ddclient/);
      expect(line("host").detail).toMatch(/nothing else was tried/);
      expect(missingDns.queries).toContain(`${DOMAIN} 1`);
    } finally {
      await missingDns.close();
    }
  });

  it("compares the name's address with the WAN address from ddns.ipLookup: a mismatch is a warning naming ddclient", async () => {
    await withBroker(undefined, async ({ tlsPort }) => {
      wanAnswer = "203.0.113.9\n";
      try {
        const { r, output, line } = await checkJson(["--port-tls", String(tlsPort)]);
        expect(r.exitCode, output).toBe(0);
        expect(line("wan address").status).toBe("warning");
        expect(line("wan address").detail).toBe(`${DOMAIN} resolves to 127.0.0.1, but http://127.0.0.1:${ipLookupPort}/ reports 203.0.113.9 from here`);
        expect(line("wan address").fix).toMatch(/ddclient/);
      } finally {
        wanAnswer = "127.0.0.1";
      }
    });
  });

  it("bounds the wait for a host that never answers to under 30 s in all, and names why", async () => {
    // A network namespace of the test's own where 10.255.255.1 sits behind a veth whose other end
    // has no address: SYNs leave and nothing ever answers (outside it, this machine's egress proxy would).
    const ns = `pibake-check-${process.pid}`;
    const ip = (...args: string[]) => execa("ip", args, { timeout: 10_000 });
    try {
      await ip("netns", "add", ns);
      await ip("-n", ns, "link", "set", "lo", "up");
      await ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1");
      await ip("-n", ns, "addr", "add", "10.0.0.1/8", "dev", "v0");
      await ip("-n", ns, "link", "set", "v0", "up");
      await ip("-n", ns, "link", "set", "v1", "up");
      await ip("-n", ns, "neigh", "add", "10.255.255.1", "lladdr", "02:00:00:00:00:01", "dev", "v0", "nud", "permanent");
      const started = Date.now();
      // --timeout 60 asks for more than the run's own bound (25 s) allows.
      const r = await execa(
        "ip",
        ["netns", "exec", ns, process.execPath, bin, "check", fx.configPath, "10.255.255.1", "--state", fx.state.dir, "--timeout", "60", "--json"],
        {
          reject: false,
          env: { ...DEFAULT_SECRET_ENV, CI: "true" },
          timeout: CLI_TIMEOUT_MS,
          stdin: "ignore",
        },
      );
      const ms = Date.now() - started;
      const output = redactAll(`${r.stdout}\n${r.stderr}`, secrets());
      expect(r.exitCode, output).toBe(1);
      expect(ms).toBeLessThan(30_000);
      const report = JSON.parse(String(r.stdout)) as Report;
      const connect = report.checks.find((c) => c.name === "tls connect")!;
      expect(connect.detail).toMatch(/^10\.255\.255\.1:8883: timed out \(TLS handshake with 10\.255\.255\.1:8883: no answer within 2\d(\.\d)? s\)/);
      expect(connect.fix).toMatch(/port forwarding|forward this port/);
      console.log(`pibake check of a host that never answers took ${ms} ms: ${connect.detail}`);
    } finally {
      await execa("ip", ["netns", "del", ns], { reject: false, timeout: 10_000 });
    }
  }, 60_000);

  it("exits 2 for bad usage", async () => {
    for (const args of [
      ["--port-tls", "abc"],
      ["--timeout", "0"],
      ["--dns-server", "nameserver"],
      ["--port-lan", "1883"],
    ]) {
      const { r, output } = await check(args);
      expect(r.exitCode, `${args.join(" ")}: ${output}`).toBe(2);
    }
    const empty = tempDir("pibake-check-empty-state-");
    mkdirSync(path.join(empty, "x"));
    const { r, output } = await check([], { state: empty });
    expect(r.exitCode).toBe(2);
    expect(output).toMatch(/no CA in/);
  });

  it("checks that Node-RED's editor asks for a login: the rendered settings.js in a real Node-RED, and one without adminAuth", {
    timeout: 300_000,
  }, async () => {
    const config = baseConfig();
    config.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] };
    const nr = await renderFixture({ config });
    const versions = nr.secrets.nodeRed!.versions;
    // The Node-RED that test/node-red.test.ts runs, from the same cache.
    const prefix = execFileSync(
      path.join(repoRoot, "scripts/fixtures/node-red.sh"),
      [versions.nodeRed.version, `${versions.dashboard!.package}@${versions.dashboard!.version}`],
      { encoding: "utf8", timeout: 240_000 },
    ).trim();
    const run = async (userDir: string) => {
      const port = await freePort();
      const { stop } = await startServer(
        process.execPath,
        [path.join(prefix, "node_modules/node-red/red.js"), "--userDir", userDir, "--port", String(port), "-D", "uiHost=127.0.0.1"],
        {
          ready: /Server now running at/,
          ms: 90_000,
          stopWith: "SIGINT",
          failure: (log) => `Node-RED did not start within 90 s:\n${redactAll(log, secrets())}`,
        },
      );
      return { port, stop };
    };
    const checkNodeRed = async (port: number) => {
      const r = await pibake(
        [
          "check",
          nr.configPath,
          "--lan",
          "--state",
          nr.state.dir,
          "--port-tls",
          String(await freePort()),
          "--port-lan",
          String(await freePort()),
          "--port-node-red",
          String(port),
          "--timeout",
          "5",
          "--json",
        ],
        {
          env: DEFAULT_SECRET_ENV,
          timeout: CLI_TIMEOUT_MS,
        },
      );
      const report = JSON.parse(String(r.stdout)) as Report;
      return report.checks.find((c) => c.name === "node-red")!;
    };
    try {
      const userDir = tempDir("pibake-check-node-red-");
      for (const f of nr.rendered.overlay.filter((x) => x.path.startsWith("home/admin/.node-red/")))
        writeFileSync(path.join(userDir, path.basename(f.path)), f.content, { mode: f.mode });
      const secured = await run(userDir);
      try {
        const line = await checkNodeRed(secured.port);
        expect(line.status, line.detail).toBe("ok");
        expect(line.detail).toMatch(/asks for a login \(credentials\)/);
      } finally {
        await secured.stop();
      }
      // An empty user directory: Node-RED's own default settings, no adminAuth.
      const open = await run(tempDir("pibake-check-node-red-open-"));
      try {
        const line = await checkNodeRed(open.port);
        expect(line.status, line.detail).toBe("failed");
        expect(line.detail).toMatch(/serves its flows without a login/);
      } finally {
        await open.stop();
      }
      // Nothing there: a failure from home (--lan).
      const closed = await checkNodeRed(await freePort());
      expect(closed.status).toBe("failed");
      expect(closed.detail).toMatch(/does not answer: refused/);
    } finally {
      nr.cleanup();
    }
  });

  it("--ssh: the first user logs in with a key of the config and passwords are refused (a real sshd with the rendered settings)", async () => {
    const work = tempDir("pibake-check-sshd-");
    chmodSync(work, 0o755);
    const keygen = (file: string, comment: string) => execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { timeout: 20_000 });
    await keygen(path.join(work, "hostkey"), "host");
    await keygen(path.join(work, "id"), "laptop key");
    await keygen(path.join(work, "other"), "someone else");
    const config = baseConfig();
    config.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] };
    config.nodeRed = { enabled: false };
    config.user.sshKeys = [readFileSync(path.join(work, "id.pub"), "utf8").trim(), TEST_SSH_KEYS[1]];
    const ssh = await renderFixture({ config });
    const sshPort = await freePort();
    // The Pi's authorized_keys holds the config's keys (the stage writes them); sshd reads it as the user.
    writeFileSync(path.join(work, "authorized_keys"), config.user.sshKeys.join("\n") + "\n", { mode: 0o644 });
    mkdirSync(path.join(work, "conf.d"));
    mkdirSync(path.join(work, "home"));
    const pibakeConf = path.join(work, "conf.d/50-pibake.conf");
    writeFileSync(pibakeConf, ssh.overlayText("etc/ssh/sshd_config.d/50-pibake.conf"));
    // Like Debian's sshd_config: the drop-ins first (the first value of a setting wins), then what a test needs.
    writeFileSync(
      path.join(work, "sshd_config"),
      [
        `Include ${work}/conf.d/*.conf`,
        `Port ${sshPort}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${work}/hostkey`,
        "PidFile none",
        "UsePAM no",
        "StrictModes no",
        `AuthorizedKeysFile ${work}/authorized_keys`,
        "",
      ].join("\n"),
    );
    // The user exists only for this sshd: passwd and shadow with it are bind-mounted in a mount namespace of its own.
    writeFileSync(path.join(work, "passwd"), readFileSync("/etc/passwd", "utf8") + `admin:x:4242:4242::${work}/home:/bin/sh\n`);
    writeFileSync(path.join(work, "shadow"), readFileSync("/etc/shadow", "utf8") + "admin:*:19000:0:99999:7:::\n", { mode: 0o600 });
    const startSshd = async () => {
      const script = `mount --bind ${work}/passwd /etc/passwd && mount --bind ${work}/shadow /etc/shadow && mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec /usr/sbin/sshd -D -e -f ${work}/sshd_config`;
      return startServer("unshare", ["-m", "sh", "-c", script], {
        ready: /Server listening on 127\.0\.0\.1 port/,
        ms: 10_000,
        stopWith: "SIGTERM",
        failure: (log) => `sshd did not start within 10 s (CI installs openssh-server):\n${log}`,
      });
    };
    const checkSsh = async (key: string, port = sshPort) => {
      const args = ["check", ssh.configPath, "--lan", "--state", ssh.state.dir, "--port-tls", String(await freePort()), "--port-lan", String(await freePort())];
      const r = await pibake([...args, "--ssh", "--ssh-key", path.join(work, key), "--port-ssh", String(port), "--timeout", "5", "--json"], {
        env: DEFAULT_SECRET_ENV,
        timeout: CLI_TIMEOUT_MS,
      });
      const report = JSON.parse(String(r.stdout)) as Report;
      return (name: string) => report.checks.find((c) => c.name === name);
    };
    try {
      let sshd = await startSshd();
      try {
        const good = await checkSsh("id");
        expect(good("ssh key login")?.status, sshd.log()).toBe("ok");
        expect(good("ssh key login")?.detail).toMatch(/^admin@127\.0\.0\.1:\d+ accepts the key SHA256:\S+ \(laptop key\) of user\.sshKeys$/);
        expect(good("ssh passwords")?.status).toBe("ok");
        expect(good("ssh passwords")?.detail).toMatch(/refuses passwords \(it offers only publickey\)/);
        expect(sshd.log()).toMatch(/Accepted publickey for admin from 127\.0\.0\.1/);
        const other = await checkSsh("other");
        expect(other("ssh key login")?.status).toBe("failed");
        expect(other("ssh key login")?.fix).toMatch(/--ssh-key/);
      } finally {
        await sshd.stop();
      }
      // A Pi whose sshd takes passwords after all.
      writeFileSync(pibakeConf, readFileSync(pibakeConf, "utf8").replace(/^PasswordAuthentication no$/m, "PasswordAuthentication yes"));
      sshd = await startSshd();
      try {
        const open = await checkSsh("id");
        expect(open("ssh passwords")?.status).toBe("failed");
        expect(open("ssh passwords")?.detail).toMatch(/offers password logins \(publickey,password\), but user\.passwordSsh is false/);
      } finally {
        await sshd.stop();
      }
      const closed = await checkSsh("id", await freePort());
      expect(closed("ssh")?.status).toBe("failed");
      expect(closed("ssh")?.detail).toMatch(/: refused \(connect to host 127\.0\.0\.1 port \d+: Connection refused\)/);
    } finally {
      ssh.cleanup();
    }
  });
});
