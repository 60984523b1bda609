/**
 * tls.mode "acme" with the real programs, all inside a network namespace of the test's own
 * (test/helpers/acme-lab.ts):
 *
 *   pebble                 Debian's pebble: the ACME CA (Let's Encrypt's test server), its
 *                          directory at https://pebble.test:14000/dir, validating DNS-01 through
 *   pebble-challtestsrv    Debian's: the DNS server holding the challenge's TXT record (8053)
 *   freemyip stand-in      freemyip.com's update API on 443 and its name server on 53
 *                          (test/helpers/freemyip-stand-in.mjs, which cites the API's source);
 *                          the update puts the TXT record into challtestsrv
 *   the rendered scripts   acme-certificate.sh (what pibake-acme.service runs; --prepare is
 *                          mosquitto's ExecStartPre) and freemyip-txt.sh (lego's hook), run
 *                          with Debian's lego, curl and openssl by test/helpers/pi-sandbox.sh,
 *                          which binds the Pi's paths from the test's directory in a mount
 *                          namespace: /etc/hosts sends freemyip.com, its name server,
 *                          pebble.test and the broker's name to 127.0.0.1, and the system's
 *                          trust store holds only the test's root (pebble's and freemyip's
 *                          HTTPS certificates)
 *   mosquitto              Debian's, with the rendered /etc/mosquitto as is (it drops to the
 *                          mosquitto user and reads the key with the rendered owner and mode)
 *   clients                mosquitto_sub/mosquitto_pub and openssl s_client, strict: they
 *                          trust only pebble's root (or only ca.crt) and check the name
 *
 * The scripts run here with this host's builds of lego, curl, openssl and mosquitto, which are
 * older than the image's on a bookworm host (trixie's openssl 3.5 prints names as "CN=…", 3.0 as
 * "CN = …"); test/acme-arm64.test.ts runs the first issuance with the image's own arm64 builds in
 * a Debian trixie arm64 root filesystem under qemu-user (an image build is too slow for either file).
 * systemd does not run here either: the units are checked by systemd-analyze verify, and the
 * scripts' output is what the journal would get.
 */
import { execa } from "execa";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, statSync, writeFileSync, cpSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import forge from "node-forge";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_SECRET_ENV, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";
import { bin } from "./helpers/cli.js";
import { AcmeLab, acmeConfig, acmeEnv, DOMAIN, fingerprint, LAB_TOOLS, run, Server, waitFor } from "./helpers/acme-lab.js";

const SANDBOX = path.join(path.dirname(fileURLToPath(import.meta.url)), "helpers", "pi-sandbox.sh");
const TOOLS = [...LAB_TOOLS, "lego", "mosquitto", "mosquitto_sub", "mosquitto_pub", "unshare", "systemd-analyze"];

async function whyNot(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "needs root (network and mount namespaces)";
  const absent: string[] = [];
  for (const t of TOOLS) if ((await execa("sh", ["-c", `command -v ${t}`], { reject: false })).exitCode !== 0) absent.push(t);
  if (absent.length)
    return `not installed: ${absent.join(", ")} (CI installs pebble, lego, mosquitto, mosquitto-clients, openssl, curl, util-linux, iproute2, systemd)`;
  return undefined;
}
const skip = await whyNot();

/** A self-signed certificate for DOMAIN with `left` of its `lifetime` days left, as lego would have stored it. */
function certificateWithDaysLeft(left: number, lifetime: number): string {
  const keys = forge.pki.rsa.generateKeyPair(1024);
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = "01";
  cert.validity.notAfter = new Date(Date.now() + left * 86_400_000);
  cert.validity.notBefore = new Date(cert.validity.notAfter.getTime() - lifetime * 86_400_000);
  cert.setSubject([{ name: "commonName", value: DOMAIN }]);
  cert.setIssuer([{ name: "commonName", value: DOMAIN }]);
  cert.setExtensions([{ name: "subjectAltName", altNames: [{ type: 2, value: DOMAIN }] }]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

describe.skipIf(skip !== undefined)(`tls.mode "acme": a public certificate through freemyip, served by mosquitto${skip ? ` (skipped: ${skip})` : ""}`, () => {
  const work = tempDir("pibake-acme-");
  const root = path.join(work, "root");
  let lab: AcmeLab;
  let fx: Fixture;
  let token: string;
  let pebbleRoot: string;
  let pebble: Server;
  let broker: Server;
  let requests: Record<string, unknown>[];

  const inNs = (cmd: string[]) => lab.inNs(cmd);
  /** A command with the Pi's paths (pi-sandbox.sh) in the namespace. */
  const onPi = (cmd: string[]) => inNs(["unshare", "--mount", "--", "bash", SANDBOX, root, ...cmd]);
  /** What pibake-acme.service runs, with short waits for the TXT record. */
  const renew = (args: string[] = [], propagationS = 20) => run(onPi(["/usr/local/lib/pibake/acme-certificate.sh", ...args]), acmeEnv(propagationS), 90_000);
  const status = () =>
    Object.fromEntries(
      readFileSync(path.join(root, "var/lib/pibake/acme.status"), "utf8")
        .trim()
        .split("\n")
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
  const lego = (f: string) => path.join(root, "var/lib/pibake/acme/lego/certificates", f);
  const opensslOut = async (args: string[], input?: string) => (await execa("openssl", args, { input, reject: false })).stdout;
  const served = () => lab.served();
  /** A strict client: mosquitto_pub trusting only `cafile`, checking the name; true when the publish went through. */
  const publish = async (cafile: string, message: string) =>
    run(
      onPi([
        "mosquitto_pub",
        "-h",
        DOMAIN,
        "-p",
        "8883",
        "--cafile",
        cafile,
        "-u",
        "hub",
        "-P",
        fx.clear.mqtt.hub!,
        "-t",
        "home/acme",
        "-m",
        message,
        "-q",
        "1",
      ]),
      {},
      20_000,
    );

  /** pibake check from inside the namespace (the built CLI), its JSON lines by name. */
  const check = async (extra: string[]) => {
    const r = await execa(
      "ip",
      inNs([
        process.execPath,
        bin,
        "check",
        fx.configPath,
        "127.0.0.1",
        "--state",
        fx.state.dir,
        "--dns-server",
        "127.0.0.1:53",
        "--timeout",
        "5",
        "--json",
        ...extra,
      ]).slice(1),
      {
        reject: false,
        env: { ...DEFAULT_SECRET_ENV, CI: "true" },
        timeout: 60_000,
        stdin: "ignore",
      },
    );
    const json = JSON.parse(r.stdout) as { checks: { name: string; status: string; detail: string }[] };
    return Object.fromEntries(json.checks.map((c) => [c.name, c]));
  };

  beforeAll(async () => {
    fx = await renderFixture({ config: acmeConfig() });
    token = fx.clear.ddns!;
    lab = new AcmeLab(`pibake-acme-${process.pid}`, work, token);
    requests = lab.requests;
    await lab.start();
    pebble = lab.pebble;
    pebbleRoot = lab.pebbleRoot;
    const id = async (flag: string) => Number((await execa("id", [flag, "mosquitto"])).stdout);
    lab.layOutPi(fx, root, { uid: await id("-u"), gid: await id("-g") });

    // The boot: mosquitto's ExecStartPre, then mosquitto with the rendered config.
    const prepared = await run(onPi(["/usr/local/lib/pibake/acme-certificate.sh", "--prepare"]));
    expect(prepared.exitCode, prepared.output).toBe(0);
    broker = new Server("mosquitto", onPi(["mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]));
    lab.servers.push(broker);
    await waitFor(
      "mosquitto",
      () => broker.output.includes(" running"),
      15_000,
      () => broker.output,
    );
  }, 120_000);

  afterAll(async () => {
    await lab?.stop();
    fx?.cleanup();
    removeAllFixtures();
  });

  it("systemd accepts the units; the timer wakes hourly with a random delay", async () => {
    const verifyRoot = path.join(work, "verify");
    for (const f of fx.rendered.overlay) {
      mkdirSync(path.dirname(path.join(verifyRoot, f.path)), { recursive: true });
      writeFileSync(path.join(verifyRoot, f.path), f.content, { mode: f.mode });
    }
    mkdirSync(path.join(verifyRoot, "usr/lib/systemd"), { recursive: true });
    cpSync("/usr/lib/systemd/system", path.join(verifyRoot, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
    const units = ["pibake-acme.service", "pibake-acme.timer"].map((u) => path.join(verifyRoot, "etc/systemd/system", u));
    const verify = await execa("systemd-analyze", [`--root=${verifyRoot}`, "verify", ...units], { reject: false });
    expect(verify.stderr).toBe("");
    const timer = fx.overlayText("etc/systemd/system/pibake-acme.timer");
    expect(timer).toMatch(/^OnUnitActiveSec=1h$/m);
    expect(timer).toMatch(/^RandomizedDelaySec=10min$/m);
    expect(fx.overlayText("etc/systemd/system/mosquitto.service.d/50-pibake.conf")).toContain(
      "ExecStartPre=-/usr/local/lib/pibake/acme-certificate.sh --prepare",
    );
  });

  it("before the first public certificate, mosquitto serves the own CA's: a ca.crt client connects, a client trusting only pebble's root does not", async () => {
    expect(await fingerprint(await served())).toBe(await fingerprint(fx.secrets.pki.serverCertPem));
    const caFile = path.join(root, "etc/mosquitto/certs/ca.crt");
    const own = await publish(caFile, "own CA");
    expect(own.exitCode, own.output).toBe(0);
    const strict = await publish(pebbleRoot, "refused");
    expect(strict.exitCode).not.toBe(0);
    // pibake check knows the mode: the own CA's certificate is a warning for now, and MQTT works.
    const c = await check(["--ca-file", pebbleRoot]);
    expect(c["tls chain"]).toMatchObject({ status: "warning" });
    expect(c["tls chain"]!.detail).toContain("the public certificate from https://pebble.test:14000/dir has not arrived yet");
    expect(c["mqtts round trip"]).toMatchObject({ status: "ok" });
  });

  let firstFingerprint = "";
  let accountKey = "";

  it("obtains a certificate for tls.domain from pebble through freemyip's update API, installs it with mosquitto's owner and mode, and mosquitto serves it", async () => {
    const before = requests.length;
    const r = await renew();
    expect(r.exitCode, r.output).toBe(0);
    // The update API got the challenge's name, a TXT value and the right token; then txt=null.
    const updates = requests.slice(before).filter((q) => q.path === "/update");
    expect(updates.map((q) => [q.domain, q.tokenOk, q.txt === "null" ? "removed" : typeof q.txt])).toEqual([
      [`_acme-challenge.${DOMAIN}`, true, "string"],
      [`_acme-challenge.${DOMAIN}`, true, "removed"],
    ]);
    expect(r.output).not.toContain(token);
    // "CN = …" from bookworm's openssl, "CN=…" from trixie's.
    expect(r.output).toMatch(new RegExp(`installed the certificate for ${DOMAIN.replaceAll(".", "\\.")} from CN ?= ?Pebble Intermediate CA`));
    expect(r.output).toMatch(/mosquitto \(pid \d+\) told to reload its certificates/);

    const pem = await served();
    firstFingerprint = await fingerprint(pem);
    const leaf = await opensslOut(["x509", "-noout", "-issuer", "-ext", "subjectAltName"], pem);
    expect(leaf).toContain("Pebble Intermediate CA");
    // The public certificate names tls.domain only: the extra names and the address stay with the own CA.
    expect(leaf.replace(/\s+/g, " ")).toMatch(new RegExp(`Subject Alternative Name: DNS:${DOMAIN.replaceAll(".", "\\.")}$`));

    const certs = path.join(root, "etc/mosquitto/certs");
    const key = statSync(path.join(certs, "public.key"));
    expect([key.mode & 0o777, key.uid]).toEqual([0o600, Number((await execa("id", ["-u", "mosquitto"])).stdout)]);
    expect(statSync(path.join(certs, "public.crt")).mode & 0o777).toBe(0o644);
    expect(statSync(path.join(root, "var/lib/pibake/acme")).mode & 0o777).toBe(0o700);
    // The status, for the first user's pibake check --ssh and the boot partition's report: no secret in it.
    expect(statSync(path.join(root, "var/lib/pibake/acme.status")).mode & 0o777).toBe(0o644);

    const strict = await publish(pebbleRoot, "public");
    expect(strict.exitCode, strict.output).toBe(0);
    // A client that trusts only ca.crt now needs the public roots: the price of the public certificate.
    expect((await publish(path.join(certs, "ca.crt"), "own CA")).exitCode).not.toBe(0);
    expect(status()).toMatchObject({ result: "ok", failures: "0" });
    expect(status().issuer).toContain("Pebble Intermediate CA");

    const [account] = (await execa("find", [path.join(root, "var/lib/pibake/acme/lego/accounts"), "-name", "*.key"])).stdout.split("\n");
    accountKey = readFileSync(account!, "utf8");

    // pibake check: the chain against the public roots plus --ca-file, the issuer, the days left.
    const c = await check(["--ca-file", pebbleRoot]);
    expect(c["tls chain"]).toMatchObject({ status: "ok" });
    expect(c["tls chain"]!.detail).toMatch(
      new RegExp(`^verified against the system's public roots and ${pebbleRoot.replaceAll(".", "\\.")}: issued by Pebble Intermediate CA`),
    );
    expect(c["certificate expiry"]!.detail).toMatch(/\((89|90) days left\), issued by Pebble Intermediate CA/);
    expect(c["tls version"]).toMatchObject({ status: "ok" });
    expect(c["mqtts round trip"]).toMatchObject({ status: "ok" });
    // Without the test root, the public roots alone do not know pebble.
    expect((await check([]))["tls chain"]).toMatchObject({ status: "failed" });
    console.log(`acme: obtained and served in ${r.ms} ms (account registration, DNS-01 through the stand-in, issuance, install, SIGHUP)`);
  });

  it("a second run, long before the renewal window, does nothing: no request to freemyip or the CA", async () => {
    const before = requests.length;
    const crt = readFileSync(lego(`${DOMAIN}.crt`), "utf8");
    const r = await renew();
    expect(r.exitCode, r.output).toBe(0);
    expect(r.output).toMatch(new RegExp(`nothing to do: the certificate for ${DOMAIN.replaceAll(".", "\\.")} is valid until \\S+; renewal from \\S+`));
    expect(r.output).not.toContain("obtaining");
    expect(requests.length).toBe(before);
    expect(readFileSync(lego(`${DOMAIN}.crt`), "utf8")).toBe(crt);
    expect(await fingerprint(await served())).toBe(firstFingerprint);
    // Renewal from day 60 of 90: a third of the lifetime left.
    const from = /renewal from (\S+)/.exec(r.output)![1]!;
    const days = (Date.parse(from) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(58);
    expect(days).toBeLessThan(61);
  });

  it("a renewal is served at once: a subscriber connected before stays connected and keeps receiving, a new client sees the new certificate", async () => {
    const sub = spawn(
      "ip",
      onPi([
        "mosquitto_sub",
        "-h",
        DOMAIN,
        "-p",
        "8883",
        "--cafile",
        pebbleRoot,
        "-u",
        "hub",
        "-P",
        fx.clear.mqtt.hub!,
        "-i",
        "held-session",
        "-t",
        "home/acme",
        "-q",
        "1",
        "-v",
      ]).slice(1),
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const received: string[] = [];
    readline.createInterface({ input: sub.stdout! }).on("line", (l) => received.push(l));
    try {
      await waitFor(
        "the subscriber",
        () => broker.output.includes("New client connected from") && broker.output.includes("as held-session"),
        15_000,
        () => broker.output,
      );
      expect((await publish(pebbleRoot, "before renewal")).exitCode).toBe(0);
      await waitFor("the message before the renewal", () => received.includes("home/acme before renewal"), 10_000);

      const r = await renew(["--force"]);
      expect(r.exitCode, r.output).toBe(0);
      await waitFor(
        "mosquitto's reload",
        () => broker.output.includes("Reloading config"),
        10_000,
        () => broker.output,
      );
      const renewed = await fingerprint(await served());
      expect(renewed).not.toBe(firstFingerprint);
      expect(renewed).toBe(await fingerprint(readFileSync(lego(`${DOMAIN}.crt`), "utf8")));

      expect((await publish(pebbleRoot, "after renewal")).exitCode).toBe(0);
      await waitFor("the message after the renewal", () => received.includes("home/acme after renewal"), 10_000);
      expect(sub.exitCode).toBeNull();
      // One connection for the whole test: no reconnect hid a dropped session.
      expect(broker.output.split("\n").filter((l) => l.includes("as held-session")).length).toBe(1);
      expect(broker.output).not.toMatch(/held-session (closed|disconnected)/);
      // The account made on the first run is the one used again.
      const [account] = (await execa("find", [path.join(root, "var/lib/pibake/acme/lego/accounts"), "-name", "*.key"])).stdout.split("\n");
      expect(readFileSync(account!, "utf8")).toBe(accountKey);
      firstFingerprint = renewed;
    } finally {
      sub.kill("SIGTERM");
    }
  });

  it("freemyip refusing the token: tried 4 times, the broker keeps its certificate, the log names the cause without the token, the next attempt waits an hour", async () => {
    const before = requests.length;
    lab.standIn.stdin!.write("mode refuse\n");
    const r = await renew(["--force"]);
    lab.standIn.stdin!.write("mode ok\n");
    expect(r.exitCode, r.output).toBe(1);
    expect(r.output).not.toContain(token);
    expect(r.output).toMatch(
      /^<3>no certificate for pibake-test\.freemyip\.com: freemyip did not set the TXT record \(freemyip-txt: freemyip refused to set the TXT record of _acme-challenge\.pibake-test\.freemyip\.com: ERROR Requested token doesn't exist: …\); attempt 1 failed, the next in 60 minutes/m,
    );
    expect(await fingerprint(await served())).toBe(firstFingerprint);
    const s = status();
    expect(s).toMatchObject({ result: "failed", failures: "1" });
    expect(Number(s.next_attempt) - Number(s.checked)).toBe(3600 - 600);
    // Four tries to set the record (freemyip's throttling answers like this too), then lego's four to remove it.
    expect(
      requests
        .slice(before)
        .filter((q) => q.path === "/update")
        .map((q) => q.txt === "null"),
    ).toEqual([false, false, false, false, true, true, true, true]);

    // The timer's next run within the back-off talks to nobody.
    const idle = requests.length;
    const waiting = await renew();
    expect(waiting.exitCode).toBe(0);
    expect(waiting.output).toMatch(/^waiting after 1 failed attempts \(freemyip did not set the TXT record/m);
    expect(requests.length).toBe(idle);
  });

  it("the TXT record never appearing when a renewal is due: the cause is named, the back-off doubles, the public certificate stays", async () => {
    // An hour later the back-off is over, and the stored certificate has 10 of its 90 days left.
    const file = path.join(root, "var/lib/pibake/acme.status");
    writeFileSync(file, readFileSync(file, "utf8").replace(/^next_attempt=.*$/m, `next_attempt=${Math.floor(Date.now() / 1000) - 1}`));
    writeFileSync(lego(`${DOMAIN}.crt`), certificateWithDaysLeft(10, 90));
    lab.standIn.stdin!.write("mode no-txt\n");
    const r = await renew([], 4);
    lab.standIn.stdin!.write("mode ok\n");
    expect(r.exitCode, r.output).toBe(1);
    expect(r.output).toContain("obtaining a certificate");
    expect(r.output).toMatch(
      /^<3>no certificate for pibake-test\.freemyip\.com: the TXT record of _acme-challenge\.pibake-test\.freemyip\.com did not appear at freemyip's name servers within 4s .*attempt 2 failed, the next in 120 minutes/m,
    );
    expect(await fingerprint(await served())).toBe(firstFingerprint);
    const s = status();
    expect(s).toMatchObject({ result: "failed", failures: "2" });
    expect(Number(s.next_attempt) - Number(s.checked)).toBe(7200 - 600);
  });

  it("the CA down: the cause is named, the broker keeps serving, and the back-off doubles again", async () => {
    await pebble.stop();
    const r = await renew(["--force"]);
    expect(r.exitCode).toBe(1);
    expect(r.output).toMatch(
      /^<3>no certificate for pibake-test\.freemyip\.com: the CA at https:\/\/pebble\.test:14000\/dir could not be reached \(.*connection refused\); attempt 3 failed, the next in 240 minutes/m,
    );
    expect(await fingerprint(await served())).toBe(firstFingerprint);
    expect((await publish(pebbleRoot, "still served")).exitCode).toBe(0);
    expect(status()).toMatchObject({ result: "failed", failures: "3" });

    // The status report on the boot partition: its ACME lines, run with the Pi's paths.
    const lines = fx.overlayText("usr/local/lib/pibake/status.sh").split("\n");
    const helpers = lines.slice(
      0,
      lines.findIndex((l) => l.startsWith("report() {")),
    );
    const from = lines.findIndex((l) => l.startsWith("\tlocal acme="));
    const to = lines.findIndex((l, i) => i > from && l === "\tfi");
    const report = await run(onPi(["bash", "-c", [...helpers, "acme_lines() {", ...lines.slice(from, to + 1), "}", "acme_lines"].join("\n")]));
    expect(report.exitCode, report.output).toBe(0);
    // (The timer's state is systemctl's answer, which this machine without systemd cannot give.)
    expect(report.output).toMatch(/^public certificate \(ACME, https:\/\/pebble\.test:14000\/dir\): /);
    expect(report.output).toMatch(/^ {2}last run: failed at \S+: the CA at https:\/\/pebble\.test:14000\/dir could not be reached \(.*\)$/m);
    expect(report.output).toMatch(/^ {2}failures in a row: 3, next attempt \d{4}-\d\d-\d\dT\d\d:\d\dZ$/m);

    // After many failures the wait stays at a day.
    const file = path.join(root, "var/lib/pibake/acme.status");
    writeFileSync(file, readFileSync(file, "utf8").replace(/^failures=.*$/m, "failures=63"));
    const later = await renew(["--force"]);
    expect(later.output).toMatch(/attempt 64 failed, the next in 1440 minutes/);
  });

  it("a restart of mosquitto (--prepare again) keeps serving the public certificate", async () => {
    const r = await run(onPi(["/usr/local/lib/pibake/acme-certificate.sh", "--prepare"]));
    expect(r.exitCode, r.output).toBe(0);
    expect(r.output).toBe("");
    expect(await fingerprint(await served())).toBe(firstFingerprint);
  });
});
