/**
 * The ACME tests' world (test/acme.test.ts, test/acme-arm64.test.ts), all inside a network
 * namespace of the test's own:
 *
 *   pebble                 Debian's pebble: the ACME CA (Let's Encrypt's test server), its
 *                          directory at https://pebble.test:14000/dir, validating DNS-01 through
 *   pebble-challtestsrv    Debian's: the DNS server holding the challenge's TXT record (8053)
 *   freemyip stand-in      freemyip.com's update API on 443 and its name server on 53
 *                          (test/helpers/freemyip-stand-in.mjs, which cites the API's source);
 *                          the update puts the TXT record into challtestsrv
 *
 * and the Pi's files for tls.mode "acme", laid out in a directory that stands for the Pi's root:
 * the render's mosquitto, ddclient and pibake files with their owner and mode, /etc/hosts sending
 * freemyip.com, its name server, pebble.test and the broker's name to 127.0.0.1, and a trust
 * store holding only the test's root (pebble's and freemyip's HTTPS certificates).
 */
import { execa, type ResultPromise } from "execa";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, cpSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { baseConfig, type Fixture, type TestConfig } from "./render-fixture.js";
import { sleep } from "./mosquitto.js";
import { deleteNamespace } from "./netns.js";

const STAND_IN = path.join(path.dirname(fileURLToPath(import.meta.url)), "freemyip-stand-in.mjs");
export const DOMAIN = "pibake-test.freemyip.com";
export const SERVER = "https://pebble.test:14000/dir";
/** The host's programs the lab runs. */
export const LAB_TOOLS = ["pebble", "pebble-challtestsrv", "openssl", "curl", "ip"];

/** The base config with tls.mode "acme" at the lab's pebble. */
export function acmeConfig(): TestConfig {
  const config = baseConfig();
  config.tls.mode = "acme";
  config.tls.acme = { email: "owner@example.org", server: SERVER };
  return config;
}

/** Every wait here is bounded well inside vitest's 120 s per test. */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  ms: number,
  log?: () => string,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${log ? `\n--- log ---\n${log().slice(-3000)}` : ""}`);
    await sleep(100);
  }
}

/** A long-running server, its output kept; stopped by stop(). */
export class Server {
  readonly child: ResultPromise;
  output = "";
  constructor(
    readonly name: string,
    cmd: string[],
    env: Record<string, string> = {},
  ) {
    this.child = execa(cmd[0]!, cmd.slice(1), { reject: false, all: true, buffer: false, env, stdin: "ignore" });
    readline.createInterface({ input: this.child.all! }).on("line", (l) => (this.output += `${l}\n`));
  }
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill("SIGTERM");
    const end = Date.now() + 3000;
    while (this.running && Date.now() < end) await sleep(20);
    if (this.running) this.child.kill("SIGKILL");
  }
}

export interface Run {
  exitCode: number | undefined;
  output: string;
  ms: number;
}

export async function run(cmd: string[], env: Record<string, string> = {}, timeout = 60_000): Promise<Run> {
  const t0 = Date.now();
  // No standard input: openssl s_client would wait on it.
  const r = await execa(cmd[0]!, cmd.slice(1), { reject: false, all: true, timeout, env, input: "" });
  return { exitCode: r.exitCode, output: r.all ?? "", ms: Date.now() - t0 };
}

/** acme-certificate.sh's knobs for a test: short waits for the TXT record and between freemyip's tries. */
export function acmeEnv(propagationS = 20): Record<string, string> {
  return { PIBAKE_ACME_PROPAGATION_TIMEOUT: String(propagationS), PIBAKE_ACME_POLLING_INTERVAL: "1", PIBAKE_FREEMYIP_RETRY_DELAY: "1" };
}

/** A certificate's SHA-256 fingerprint, by this host's openssl. */
export async function fingerprint(pem: string): Promise<string> {
  return (await execa("openssl", ["x509", "-noout", "-fingerprint", "-sha256"], { input: pem })).stdout;
}

export class AcmeLab {
  readonly pki: string;
  /** The stand-in's name server as a Unix socket (DNS messages after their length, as over TCP): reachable from outside the namespace. */
  readonly dnsSocket: string;
  /** pebble's root, as its management API gives it: set by start(). */
  pebbleRoot = "";
  /** The stand-in's requests, one JSON line each. */
  readonly requests: Record<string, unknown>[] = [];
  readonly servers: Server[] = [];
  pebble!: Server;
  standIn!: ChildProcess;

  /** `ns`: the network namespace's name; `work`: a directory of the test's own. */
  constructor(
    readonly ns: string,
    readonly work: string,
    readonly token: string,
  ) {
    this.pki = path.join(work, "pki");
    this.dnsSocket = path.join(work, "dns.sock");
  }

  inNs(cmd: string[]): string[] {
    return ["ip", "netns", "exec", this.ns, ...cmd];
  }

  /** The test's root and HTTPS certificates from it, the namespace, and the servers in it. */
  async start(): Promise<void> {
    const { pki, work } = this;
    mkdirSync(pki);
    const ossl = (args: string[]) => execa("openssl", args, { cwd: pki });
    await ossl([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      "root.key",
      "-out",
      "root.crt",
      "-days",
      "2",
      "-subj",
      "/CN=pibake acme test root",
    ]);
    for (const name of ["pebble.test", "freemyip.com"]) {
      await ossl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
      writeFileSync(path.join(pki, `${name}.ext`), `subjectAltName=DNS:${name}\n`);
      await ossl([
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-out",
        `${name}.crt`,
        "-days",
        "2",
        "-extfile",
        `${name}.ext`,
      ]);
    }
    writeFileSync(path.join(work, "token"), this.token, { mode: 0o600 });

    await execa("ip", ["netns", "add", this.ns]);
    await execa("ip", ["-n", this.ns, "link", "set", "lo", "up"]);
    this.servers.push(
      new Server(
        "challtestsrv",
        this.inNs(["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "", "-dns01", "127.0.0.1:8053", "-management", "127.0.0.1:8055"]),
      ),
    );
    writeFileSync(
      path.join(work, "pebble.json"),
      JSON.stringify({
        pebble: {
          listenAddress: "127.0.0.1:14000",
          managementListenAddress: "127.0.0.1:15000",
          certificate: path.join(pki, "pebble.test.crt"),
          privateKey: path.join(pki, "pebble.test.key"),
          httpPort: 5002,
          tlsPort: 5001,
          ocspResponderURL: "",
          externalAccountBindingRequired: false,
          // Let's Encrypt's 90 days, so that the renewal window is the real one.
          certificateValidityPeriod: 90 * 86400,
        },
      }),
    );
    // No artificial sleeps in validation, no rejected nonces: the timings measure pibake's part. No
    // reuse of a validated name either (Let's Encrypt reuses them for 30 days): every order here
    // goes through freemyip.
    this.pebble = new Server("pebble", this.inNs(["pebble", "-config", path.join(work, "pebble.json"), "-dnsserver", "127.0.0.1:8053"]), {
      PEBBLE_VA_NOSLEEP: "1",
      PEBBLE_WFE_NONCEREJECT: "0",
      PEBBLE_AUTHZREUSE: "0",
    });
    this.servers.push(this.pebble);
    this.standIn = spawn(
      "ip",
      this.inNs([
        process.execPath,
        STAND_IN,
        JSON.stringify({
          tokenFile: path.join(work, "token"),
          cert: path.join(pki, "freemyip.com.crt"),
          key: path.join(pki, "freemyip.com.key"),
          challtestsrv: "127.0.0.1:8055",
          challtestsrvDns: "127.0.0.1:8053",
          dnsSocket: this.dnsSocket,
          zone: "freemyip.com",
          nameServer: "ns1.freemyip.com",
          domain: DOMAIN,
        }),
      ]).slice(1),
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    readline.createInterface({ input: this.standIn.stdout! }).on("line", (l) => this.requests.push(JSON.parse(l) as Record<string, unknown>));
    await waitFor("the freemyip stand-in", () => this.requests.some((r) => r.ready), 15_000);
    await waitFor(
      "pebble",
      () => this.pebble.output.includes("Listening on"),
      15_000,
      () => this.pebble.output,
    );
    await waitFor(
      "challtestsrv",
      async () => (await run(this.inNs(["curl", "-s", "-o", "/dev/null", "-d", "{}", "http://127.0.0.1:8055/clear-txt"]), {}, 5000)).exitCode === 0,
      15_000,
    );
    const roots = await run(
      this.inNs(["curl", "-sS", "--cacert", path.join(pki, "root.crt"), "--resolve", "pebble.test:15000:127.0.0.1", "https://pebble.test:15000/roots/0"]),
    );
    if (!roots.output.includes("BEGIN CERTIFICATE")) throw new Error(`no root from pebble:\n${roots.output}`);
    this.pebbleRoot = path.join(work, "pebble-root.crt");
    writeFileSync(this.pebbleRoot, roots.output);
  }

  /**
   * The Pi's files, as the render has them (owner and mode too; `mosquitto` is the uid and gid
   * of the mosquitto user where they are used), its empty state, and the names and trust store
   * that lead to the lab, in `root`.
   */
  layOutPi(fx: Fixture, root: string, mosquitto: { uid: number; gid: number }): void {
    for (const f of fx.rendered.overlay.filter((o) => /^(etc\/mosquitto\/|etc\/ddclient\.conf$|usr\/local\/lib\/pibake\/)/.test(o.path))) {
      const target = path.join(root, f.path);
      mkdirSync(path.dirname(target), { recursive: true });
      writeFileSync(target, f.content);
      chmodSync(target, f.mode);
      if (f.owner === "mosquitto") chownSync(target, mosquitto.uid, mosquitto.gid);
    }
    for (const d of ["var/lib/pibake", "var/lib/mosquitto", "run/mosquitto", "etc/ssl/certs"]) mkdirSync(path.join(root, d), { recursive: true });
    for (const d of ["var/lib/mosquitto", "run/mosquitto"]) chownSync(path.join(root, d), mosquitto.uid, mosquitto.gid);
    writeFileSync(path.join(root, "etc/hosts"), `127.0.0.1 localhost\n127.0.0.1 freemyip.com ns1.freemyip.com pebble.test ${DOMAIN}\n`);
    writeFileSync(path.join(root, "etc/resolv.conf"), "nameserver 127.0.0.1\n");
    cpSync(path.join(this.pki, "root.crt"), path.join(root, "etc/ssl/certs/ca-certificates.crt"));
  }

  /** The certificate the TLS listener on 8883 serves now, as a fresh client (this host's openssl s_client) sees it. */
  async served(): Promise<string> {
    const r = await run(this.inNs(["openssl", "s_client", "-connect", "127.0.0.1:8883", "-servername", DOMAIN]), {}, 15_000);
    const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.output)?.[0];
    if (!pem) throw new Error(`no certificate from the broker:\n${r.output}`);
    return pem;
  }

  /** The servers stopped; whatever is left in the namespace goes with it. */
  async stop(): Promise<void> {
    this.standIn?.kill("SIGTERM");
    for (const s of this.servers) await s.stop();
    await deleteNamespace(this.ns);
  }
}
