/**
 * fail2ban as the Pi runs it: the rendered jail file and mosquitto filter on
 * top of Debian's own fail2ban configuration.
 *
 * - A real mosquitto (the rendered config, on 127.0.0.1) and a real sshd fail
 *   logins; their log lines go into a real systemd journal file
 *   (systemd-journal-remote) with the fields journald gives them, and
 *   fail2ban-regex reads it through its systemd backend with the jails'
 *   journal matches: the right failures, with the right addresses.
 * - In network namespaces, with the rendered firewall loaded, fail2ban-server
 *   itself runs the rendered jail: five failed MQTT logins from the Internet
 *   ban the address through fail2ban's own nftables table, after which it
 *   cannot connect while the home network (never banned) and other Internet
 *   addresses still can; reloading pibake's ruleset keeps the ban.
 */
import { appendFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import tls from "node:tls";
import { execa, type ResultPromise } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";
import { connect, sleep } from "./helpers/mosquitto.js";
import { freePort, waitForPort } from "./helpers/net.js";
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
  type Topology,
} from "./helpers/netns.js";
import { FAIL2BAN } from "../src/render/firewall.js";

const JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote";
const isRoot = process.getuid?.() === 0;
const missing = ["/usr/bin/fail2ban-regex", JOURNAL_REMOTE].filter((f) => !existsSync(f));
const netns = await netnsUnavailable();

interface JournalEntry {
  unit: string;
  ident: string;
  pid: number;
  message: string;
}

/**
 * A journal file holding `entries` with the fields journald records for a
 * service's stderr (_SYSTEMD_UNIT, SYSLOG_IDENTIFIER, _PID, _COMM, _HOSTNAME),
 * written by systemd-journal-remote from journal export format.
 */
async function writeJournal(file: string, entries: JournalEntry[]): Promise<void> {
  const now = Date.now() * 1000;
  const text = entries
    .map((e, i) =>
      [
        `__REALTIME_TIMESTAMP=${now - (entries.length - i) * 1000}`,
        `__MONOTONIC_TIMESTAMP=${i + 1}`,
        "_BOOT_ID=5a2e1a3c7d6b4f0e9c8b7a6f5e4d3c2b",
        "_HOSTNAME=broker",
        `_SYSTEMD_UNIT=${e.unit}`,
        `SYSLOG_IDENTIFIER=${e.ident}`,
        `_COMM=${e.ident}`,
        `_PID=${e.pid}`,
        "PRIORITY=6",
        `MESSAGE=${e.message}`,
        "",
      ].join("\n"),
    )
    .join("\n");
  await execa(JOURNAL_REMOTE, [`--output=${file}`, "-"], { input: text, timeout: 20_000 });
}

/** Debian's fail2ban configuration with the rendered jail and filter added, as on the Pi. */
function fail2banConfig(fx: Fixture, dir: string): string {
  cpSync("/etc/fail2ban", dir, { recursive: true });
  for (const p of ["etc/fail2ban/jail.d/pibake.local", "etc/fail2ban/filter.d/pibake-mosquitto.conf"]) {
    writeFileSync(path.join(dir, p.slice("etc/fail2ban/".length)), fx.overlayFile(p));
  }
  return dir;
}

/** `fail2ban-regex -o ip` over a journal file: the address of every failure found, in order. */
async function failuresInJournal(confDir: string, journal: string, filter: string, journalMatch?: string): Promise<string[]> {
  const r = await execa(
    "fail2ban-regex",
    ["-o", "ip", "--config", confDir, ...(journalMatch ? ["-m", journalMatch] : []), `systemd-journal[journalfiles="${journal}"]`, filter],
    {
      timeout: 30_000,
      reject: false,
    },
  );
  expect(r.exitCode, r.stderr).toBe(0);
  return r.stdout.split("\n").filter(Boolean);
}

/** An MQTT 3.1.1 CONNECT with a user name and password, for a client that sends it when the test says. */
function connectPacket(clientId: string, user: string, password: string): Buffer {
  const str = (s: string) => {
    const b = Buffer.from(s, "utf8");
    return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
  };
  const body = Buffer.concat([str("MQTT"), Buffer.from([4, 0xc2, 0, 60]), str(clientId), str(user), str(password)]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

describe.skipIf(missing.length > 0)(
  `fail2ban reads the journal${missing.length ? ` (skipped: ${missing.join(", ")} missing; CI installs fail2ban and systemd-journal-remote)` : ""}`,
  () => {
    afterAll(removeAllFixtures);

    it("finds every failed MQTT login on the TLS listener of a real mosquitto, with the client's address, and nothing else", async () => {
      const config = baseConfig();
      config.mqtt.lanPort = await freePort();
      config.mqtt.tlsPort = await freePort();
      const fx = await renderFixture({ config });
      const root = tempDir("pibake-f2b-mosquitto-");
      const broker = new NetnsBroker(undefined, layOutMosquitto(fx.rendered.overlay, root, { loopback: true }));
      let held: tls.TLSSocket | undefined;
      try {
        await broker.waitForLog(/mosquitto version \S+ running/, 10_000);
        const ca = fx.overlayText("etc/mosquitto/certs/ca.crt");
        const tlsOpts = {
          host: "127.0.0.1",
          port: fx.model.mqtt.tlsPort,
          protocol: "mqtts" as const,
          ca,
          servername: fx.model.tls.domain,
          rejectUnauthorized: true,
        };
        const login = async (localAddress: string, username: string, password: string) =>
          (await connect({ ...tlsOpts, localAddress, username, password, clientId: `c-${localAddress}` } as never)).error?.message ?? "connected";

        expect(await login("127.0.0.2", "hub", "a-wrong-password")).toMatch(/not authori[sz]ed/i);
        expect(await login("127.0.0.3", "nosuchuser", "a-wrong-password")).toMatch(/not authori[sz]ed/i);
        const ok = await connect({ ...tlsOpts, localAddress: "127.0.0.4", username: "hub", password: fx.clear.mqtt.hub } as never);
        expect(ok.error).toBeUndefined();
        ok.client!.end(true);
        // A failure on the LAN listener is not the Internet's.
        expect((await connect({ host: "127.0.0.1", port: fx.model.mqtt.lanPort, username: "hub", password: "a-wrong-password" })).error?.message).toMatch(
          /not authori[sz]ed/i,
        );
        // Two connections in flight: X is accepted, then Y is accepted and fails, then X fails.
        // node:tls hands localAddress to the socket it makes, though its type does not list it.
        held = tls.connect({
          host: "127.0.0.1",
          port: fx.model.mqtt.tlsPort,
          localAddress: "127.0.0.6",
          ca,
          servername: fx.model.tls.domain,
        } as tls.ConnectionOptions);
        held.on("error", () => undefined);
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no TLS handshake within 5 s")), 5000);
          held!.once("secureConnect", () => (clearTimeout(timer), resolve()));
        });
        await broker.waitForLog(/New connection from 127\.0\.0\.6:/, 5000);
        expect(await login("127.0.0.5", "hub", "a-wrong-password")).toMatch(/not authori[sz]ed/i);
        held.write(connectPacket("held", "hub", "a-wrong-password"));
        await broker.waitForLog(/(not authorised\.\n[^]*){5}/, 5000);
      } finally {
        held?.destroy();
        await broker.stop();
      }
      const lines = broker.log.split("\n").filter(Boolean);
      const journal = path.join(tempDir("pibake-journal-"), "mosquitto.journal");
      await writeJournal(journal, [
        ...lines.map((message) => ({ unit: "mosquitto.service", ident: "mosquitto", pid: 812, message })),
        // Another unit's lines that look like mosquitto's: the jail's journal match leaves them out.
        { unit: "other.service", ident: "mosquitto", pid: 900, message: `New connection from 198.51.100.9:4242 on port ${fx.model.mqtt.tlsPort}.` },
        { unit: "other.service", ident: "mosquitto", pid: 900, message: "Client forged disconnected, not authorised." },
      ]);
      const confDir = fail2banConfig(fx, path.join(tempDir("pibake-f2b-conf-"), "fail2ban"));
      const found = await failuresInJournal(confDir, journal, "pibake-mosquitto");
      expect(found, broker.log).toEqual(["127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6"]);
    });

    it.skipIf(!isRoot || !existsSync("/usr/sbin/sshd"))(
      "finds a real sshd's failed logins (unknown user, wrong password), logged as sshd or as sshd-session (OpenSSH 9.8 and later), with the jail's filter and journal match",
      async () => {
        const fx = await renderFixture({ config: baseConfig() });
        const dir = tempDir("pibake-sshd-");
        const port = await freePort();
        await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "host_key")], { timeout: 20_000 });
        writeFileSync(
          path.join(dir, "sshd_config"),
          [
            `ListenAddress 127.0.0.1`,
            `Port ${port}`,
            `HostKey ${dir}/host_key`,
            "PidFile none",
            "UsePAM no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "AuthorizedKeysFile none",
            "LogLevel INFO",
            "",
          ].join("\n"),
        );
        writeFileSync(path.join(dir, "askpass"), "#!/bin/sh\necho a-wrong-password\n", { mode: 0o755 });
        // sshd's privilege separation needs its empty directory.
        mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
        let log = "";
        const sshd: ResultPromise = execa("/usr/sbin/sshd", ["-D", "-e", "-f", path.join(dir, "sshd_config")], { reject: false, all: true, buffer: false });
        sshd.all!.on("data", (d: Buffer) => (log += d.toString()));
        try {
          await waitForPort(port, 10_000, () => sshd.exitCode === null);
          const ssh = (from: string, user: string) =>
            execa(
              "ssh",
              [
                "-b",
                from,
                "-p",
                String(port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=5",
                `${user}@127.0.0.1`,
                "true",
              ],
              {
                reject: false,
                timeout: 15_000,
                stdin: "ignore",
                env: { SSH_ASKPASS: path.join(dir, "askpass"), SSH_ASKPASS_REQUIRE: "force", DISPLAY: "none" },
              },
            );
          expect((await ssh("127.0.0.2", "nosuchuser")).exitCode).toBe(255);
          expect((await ssh("127.0.0.3", "root")).exitCode).toBe(255);
          const deadline = Date.now() + 5000;
          while (!/Failed password for root/.test(log) && Date.now() < deadline) await sleep(50);
        } finally {
          sshd.kill("SIGTERM");
          await Promise.race([sshd, sleep(3000)]);
          sshd.kill("SIGKILL");
        }
        const lines = log.split("\n").filter((l) => l && !l.startsWith("Server listening"));
        const confDir = fail2banConfig(fx, path.join(tempDir("pibake-f2b-conf-"), "fail2ban"));
        // The jail's own filter line and journal match, as fail2ban-server would use them.
        const section = fx
          .overlayText("etc/fail2ban/jail.d/pibake.local")
          .split(/^(?=\[)/m)
          .find((s) => s.startsWith("[sshd]\n"))!;
        const filter = /^filter = (.+)$/m.exec(section)?.[1] ?? "sshd";
        const match = /^journalmatch = (.+)$/m.exec(section)![1]!;
        expect(match).toContain("_SYSTEMD_UNIT=ssh.service");
        // OpenSSH before 9.8 (bookworm) logs as sshd, later ones (trixie) as sshd-session.
        for (const ident of ["sshd", "sshd-session"]) {
          const journal = path.join(tempDir("pibake-journal-"), "ssh.journal");
          await writeJournal(
            journal,
            lines.map((message) => ({ unit: "ssh.service", ident, pid: 700, message })),
          );
          const found = await failuresInJournal(confDir, journal, filter, match);
          expect(found, `${ident}:\n${log}`).toEqual(["127.0.0.2", "127.0.0.2", "127.0.0.3"]);
        }
      },
    );
  },
);

describe.skipIf(missing.length > 0 || netns !== undefined)(`a fail2ban ban takes effect beside the firewall${netns ? ` (skipped: ${netns})` : ""}`, () => {
  let fx: Fixture;
  let topo: Topology | undefined;
  let broker: NetnsBroker | undefined;
  let server: ResultPromise | undefined;
  let serverLog = "";
  let confDir: string;
  let rules: string;

  /** "Dec  5 19:03:14": the time as syslog writes it, which fail2ban's polling backend reads. */
  const syslogTime = (d: Date) =>
    `${d.toLocaleString("en-US", { month: "short" })} ${String(d.getDate()).padStart(2, " ")} ${[d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":")}`;

  beforeAll(async () => {
    fx = await renderFixture({ config: baseConfig() });
    const dir = tempDir("pibake-f2b-ban-");
    rules = path.join(dir, "nftables.conf");
    writeFileSync(rules, fx.overlayFile("etc/nftables.conf"));
    topo = await makeTopology("f2b");
    await loadRuleset(topo, topo.pi, rules);

    // mosquitto's lines go to a file as journald would pass them on; the test's only stand-in: no journald runs here.
    const log = path.join(dir, "mosquitto.log");
    writeFileSync(log, "");
    broker = new NetnsBroker(topo.pi, layOutMosquitto(fx.rendered.overlay, dir), (line) =>
      appendFileSync(log, `${syslogTime(new Date())} broker mosquitto[812]: ${line}\n`),
    );
    await broker.waitForLog(/mosquitto version \S+ running/, 10_000);

    confDir = fail2banConfig(fx, path.join(dir, "fail2ban"));
    rmSync(path.join(confDir, "jail.d/defaults-debian.conf"), { force: true });
    writeFileSync(
      path.join(confDir, "jail.d/zz-test.local"),
      `[DEFAULT]\nbackend = polling\n\n[sshd]\nenabled = false\n\n[pibake-mosquitto]\nlogpath = ${log}\n`,
    );
    writeFileSync(
      path.join(confDir, "fail2ban.local"),
      `[Definition]\ndbfile = ${dir}/fail2ban.sqlite3\nsocket = ${dir}/fail2ban.sock\npidfile = ${dir}/fail2ban.pid\nlogtarget = STDERR\n`,
    );
    server = execa("ip", ["netns", "exec", topo.pi, "fail2ban-server", "-f", "-x", "-c", confDir], { reject: false, all: true, buffer: false });
    server.all!.on("data", (d: Buffer) => (serverLog += d.toString()));
    const deadline = Date.now() + 20_000;
    while (!/Jail 'pibake-mosquitto' started/.test(serverLog)) {
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(`fail2ban-server did not start its jail:\n${serverLog}`);
      await sleep(100);
    }
  }, 60_000);

  afterAll(async () => {
    if (server && server.exitCode === null) {
      server.kill("SIGTERM");
      await Promise.race([server, sleep(5000)]);
      server.kill("SIGKILL");
    }
    await broker?.stop();
    await topo?.destroy();
    removeAllFixtures();
  });

  const mqttLogins = (ns: string, host: string, password: string, count: number) =>
    probe(topo!, ns, {
      op: "mqtt",
      url: `mqtts://${host}:${fx.model.mqtt.tlsPort}`,
      username: "hub",
      password,
      ca: fx.overlayText("etc/mosquitto/certs/ca.crt"),
      servername: fx.model.tls.domain,
      timeoutMs: 5000,
      count,
    });
  // Over veth the "port unreachable" can come back while connect() still holds the socket, and
  // Linux then drops it (TcpExtLockDroppedIcmps); the answer to the SYN sent again a second later counts.
  const tcp = (ns: string, host: string, port: number, localAddress?: string) =>
    probe(topo!, ns, { op: "tcp", host, port, timeoutMs: 3000, ...(localAddress ? { localAddress } : {}) }).then((r) => r[0]);

  /** fail2ban logs "Ban" before its action has run: wait (bounded) until nft shows the address in the jail's set. */
  async function waitForBan(address: string): Promise<void> {
    const set = address.includes(":") ? "addr6-set-pibake-mosquitto" : "addr-set-pibake-mosquitto";
    const deadline = Date.now() + 20_000;
    let listed = "";
    while (Date.now() < deadline) {
      listed = (await topo!.run(topo!.pi, "nft", ["list", "set", "inet", "f2b-table", set])).stdout;
      if (listed.includes(address)) return;
      await sleep(200);
    }
    throw new Error(`${address} not in ${set} within 20 s\n--- nft ---\n${listed}\n--- fail2ban ---\n${serverLog}`);
  }

  it(`never bans the home network, bans an Internet address after ${FAIL2BAN.maxRetry} failed logins, and the ban holds through a reload of pibake's ruleset`, async () => {
    const lanResults = await mqttLogins(topo!.lan, PI_LAN.v4, "a-wrong-password", FAIL2BAN.maxRetry + 1);
    expect(lanResults).toEqual(Array(FAIL2BAN.maxRetry + 1).fill("not authorised"));
    const internet = await mqttLogins(topo!.inet, PI_WAN.v4, "a-wrong-password", FAIL2BAN.maxRetry);
    expect(internet).toEqual(Array(FAIL2BAN.maxRetry).fill("not authorised"));

    await waitForBan(INTERNET_PEER.v4);
    expect(serverLog, "fail2ban's log").toContain(`[pibake-mosquitto] Ban ${INTERNET_PEER.v4}`);
    expect(serverLog).toContain(`Ignore ${LAN_PEER.v4} by ip`);
    expect(serverLog).not.toContain(`Ban ${LAN_PEER.v4}`);
    // Banned on every TCP port (nftables-allports), answered with "port unreachable".
    expect(await tcp(topo!.inet, PI_WAN.v4, fx.model.mqtt.tlsPort, INTERNET_PEER.v4)).toBe("refused");
    expect(await tcp(topo!.inet, PI_WAN.v4, fx.model.mqtt.tlsPort, INTERNET_PEER.v4b)).toBe("connected");
    expect(await mqttLogins(topo!.lan, PI_LAN.v4, fx.clear.mqtt.hub!, 1)).toEqual(["connected"]);

    // nftables.service reloading /etc/nftables.conf replaces pibake's table only.
    await loadRuleset(topo!, topo!.pi, rules);
    const tables = await topo!.run(topo!.pi, "nft", ["list", "tables"]);
    expect(tables.stdout.split("\n").sort()).toEqual(["table inet f2b-table", "table inet pibake"]);
    expect(await tcp(topo!.inet, PI_WAN.v4, fx.model.mqtt.tlsPort, INTERNET_PEER.v4)).toBe("refused");
    expect(await tcp(topo!.lan, PI_LAN.v4, fx.model.mqtt.tlsPort)).toBe("connected");
  });

  it("bans an IPv6 address from the Internet the same way: mosquitto's address:port is read right", async () => {
    const v6 = INTERNET_PEER.v6;
    expect(await mqttLogins(topo!.inet, `[${PI_WAN.v6}]`, "a-wrong-password", FAIL2BAN.maxRetry)).toEqual(Array(FAIL2BAN.maxRetry).fill("not authorised"));
    await waitForBan(v6);
    expect(serverLog, "fail2ban's log").toContain(`[pibake-mosquitto] Ban ${v6}`);
    expect(await tcp(topo!.inet, PI_WAN.v6, fx.model.mqtt.tlsPort)).toBe("refused");
    expect(await tcp(topo!.lan, PI_LAN.v6, fx.model.mqtt.tlsPort)).toBe("connected");
  });
});
