import { execa } from "execa";
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import dgram from "node:dgram";
import net from "node:net";
import tls from "node:tls";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { MqttClient } from "mqtt";
import { pibake, repoRoot, secretEnv, tempDir } from "../helpers/cli.js";
import { bootFile, mountRoot } from "../helpers/image.js";
import { pibakeImage, regenerate, env, type Regenerated } from "../helpers/pibake-image.js";
import { bootVm, cmdlineForQemu, Deadline, sshRun, waitForBroker, withBootDiagnostics, type Vm } from "../helpers/qemu.js";
import { tryConnect } from "../helpers/mqtt.js";
import { unexpectedChecks, type CheckReport } from "../helpers/check-report.js";
import { AcmeLab, DOMAIN, LAB_TOOLS, SERVER } from "../helpers/acme-lab.js";
import { shellQuote } from "../../src/host/shell.js";

/**
 * Issue 25's proof by boot: an image built with tls.mode "acme" boots under QEMU, serves the own
 * CA's certificate first, and then, by itself (pibake-acme.timer, lego's DNS-01 through freemyip's
 * update API, install, SIGHUP), the public certificate: a strict client that trusts only the
 * test CA's root and checks the name gets through. The time from power-on to that is logged.
 *
 * The image: the cached pibake image (test/helpers/pibake-image.ts) built again as root with
 * tls.mode "acme" (regenerate(): the full path, since "acme" adds the lego package).
 *
 * The Internet: test/helpers/acme-lab.ts's lab (pebble, pebble-challtestsrv, the freemyip
 * stand-in with its update API on 443 and its name server on 53), in a network namespace of the
 * test's own. QEMU hands the guest's TCP connections to GUEST_LAB:443 and :14000 each to
 * test/helpers/tcp-relay.mjs run in that namespace (guestfwd…-cmd:). DNS is UDP, which guestfwd
 * does not carry (and Debian's lego 4.9.1 has no TCP-only switch): the guest asks 10.0.2.2:53,
 * which QEMU's user network (restrict=off) delivers to this host's 127.0.0.1:53, where the test
 * passes each question to the stand-in's name server through its Unix socket (dnsBridge). What the
 * test adds to the image, outside what pibake writes, is one drop-in for pibake-acme.service (see
 * fitAcmeToTheLab): its own /etc/hosts and /etc/resolv.conf (freemyip.com and pebble.test at
 * GUEST_LAB, the name server and freemyip's at 10.0.2.2), the lab's root for lego
 * (LEGO_CA_CERTIFICATES, pebble's HTTPS) and curl (CURL_CA_BUNDLE, the stand-in's HTTPS), and,
 * for NTP, a unit of the test's that sets the clock from QEMU's RTC early in the boot.
 * pibake's own knobs (the timer, lego's propagation wait and polling) stay as the Pi has them.
 */
const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64") && existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const wanted = process.env.PIBAKE_SLOW_TESTS === "1";
const RELAY = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "helpers", "tcp-relay.mjs");
/** The lab's address in the guest's network: any address of QEMU's 10.0.2.0/24 but the host's (.2) and its DNS's (.3). */
const GUEST_LAB = "10.0.2.100";
/** The lab's TCP ports the guest reaches: the stand-in's update API, pebble's directory. */
const LAB_PORTS = [443, 14000];
/** The guest's way to this host's 127.0.0.1 in QEMU's user network. */
const GUEST_HOST = "10.0.2.2";
const MARGIN = 40_000;
const STEP = {
  connect: 15_000,
  ssh: 30_000,
  check: 60_000,
  /** Power-on until the broker answers (cloud-init's first boot under TCG included). */
  broker: 600_000,
  /**
   * The broker answering until the public certificate is served: the timer's first run comes 1 to
   * 11 minutes after boot (OnBootSec=1min plus RandomizedDelaySec=10min), then lego under TCG.
   */
  publicCert: 900_000,
};
const BUDGET = {
  /** The cached image (built only when stages/ or overlays/ changed), the acme image (the full path), the QEMU kernel (cached). */
  build: 1_800_000,
  boot: STEP.broker + STEP.publicCert + 4 * STEP.connect + 2 * STEP.ssh,
  check: STEP.check + STEP.ssh,
};

/** What a client sees of the certificate served on 8883 for DOMAIN, trusting only `ca`. */
interface Served {
  /** The chain verifies against `ca` and the certificate names DOMAIN: what a strict client accepts. */
  authorized: boolean;
  error?: string;
  issuer?: string;
  fingerprint?: string;
}

function served(port: number, ca: Buffer, ms: number): Promise<Served> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: "127.0.0.1", port, servername: DOMAIN, ca, rejectUnauthorized: false });
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ authorized: false, error: `no TLS handshake within ${ms} ms` });
    }, ms);
    s.once("secureConnect", () => {
      clearTimeout(timer);
      const raw = s.getPeerX509Certificate();
      resolve({
        authorized: s.authorized,
        ...(s.authorizationError ? { error: String(s.authorizationError) } : {}),
        issuer: raw?.issuer.replace(/\n/g, ", "),
        fingerprint: raw?.fingerprint256,
      });
      s.destroy();
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      resolve({ authorized: false, error: e.message });
    });
  });
}

/**
 * DNS over UDP on this host's 127.0.0.1:53 (where QEMU delivers the guest's questions to
 * GUEST_HOST:53), each question passed to the lab's name server through its Unix socket.
 */
async function dnsBridge(socketPath: string): Promise<dgram.Socket> {
  const udp = dgram.createSocket("udp4");
  udp.on("message", (msg, from) => {
    const c = net.connect(socketPath);
    const timer = setTimeout(() => c.destroy(), 5_000);
    let got = Buffer.alloc(0);
    c.on("error", () => c.destroy());
    c.on("close", () => clearTimeout(timer));
    c.on("data", (d) => {
      got = Buffer.concat([got, d]);
      if (got.length < 2 || got.length < 2 + got.readUInt16BE(0)) return;
      udp.send(got.subarray(2, 2 + got.readUInt16BE(0)), from.port, from.address);
      c.destroy();
    });
    const len = Buffer.alloc(2);
    len.writeUInt16BE(msg.length);
    c.write(Buffer.concat([len, msg]));
  });
  await new Promise<void>((resolve, reject) => {
    udp.once("error", reject);
    udp.bind(53, "127.0.0.1", () => resolve());
  });
  return udp;
}

async function whyNot(): Promise<string | undefined> {
  if (!wanted) return "PIBAKE_SLOW_TESTS=1 runs it (npm run test:slow)";
  if (!isRoot) return "needs root (the build's full path, loop devices, a network namespace)";
  if (!hasQemu) return "needs qemu-system-aarch64 and qemu-user's binfmt entry";
  const absent: string[] = [];
  for (const t of LAB_TOOLS) if ((await execa("sh", ["-c", `command -v ${t}`], { reject: false })).exitCode !== 0) absent.push(t);
  return absent.length ? `not installed: ${absent.join(", ")}` : undefined;
}
const skip = await whyNot();

describe.skipIf(skip !== undefined)(
  `tls.mode "acme" booted: the public certificate arrives by itself and is served${skip ? ` (skipped: ${skip})` : ""}`,
  () => {
    const tmp = tempDir("pibake-boot-acme-");
    let built: Regenerated;
    let kernel = "";
    let lab: AcmeLab | undefined;
    let vm: Vm | undefined;
    let ownCa: Buffer;
    let pebbleRoot: Buffer;
    let held: MqttClient | undefined;
    let bridge: dgram.Socket | undefined;
    /** The first test got as far as the public certificate served. */
    let publicServed = false;
    const heldEvents: string[] = [];
    const heldMessages: string[] = [];
    const ssh = () => ({ port: vm!.ports.ssh!, user: "admin", key: built.key });
    /** A command as root in the guest, through sudo with the first user's password. */
    const asRoot = (command: string, ms: number) =>
      sshRun(vm!.ports.ssh!, "admin", built.key, `printf '%s\\n' ${shellQuote(secretEnv.T_USER_PW)} | sudo -S -p '' sh -c ${shellQuote(command)}`, ms);

    beforeAll(async () => {
      const d = new Deadline("build", BUDGET.build);
      const img = await pibakeImage();
      const config = { ...img.config, tls: { ...img.config.tls, domain: DOMAIN, mode: "acme", acme: { email: "owner@example.org", server: SERVER } } };
      const t0 = Date.now();
      built = await regenerate(img, { dir: path.join(tmp.dir, "acme"), domain: DOMAIN, config });
      expect(built.exitCode, built.output.slice(-4000)).toBe(0);
      // "acme" adds lego: packages to install, which the fast path cannot.
      expect(built.output).toMatch(/full build, not the fast path: .*lego/);
      console.log(`boot-acme: the acme image built from the cached pibake image (the full path, as root) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      ownCa = readFileSync(path.join(built.out, "ca.crt"));
      kernel = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/qemu-kernel.sh")], { timeout: d.cap(1_200_000) })).stdout.trim();

      lab = new AcmeLab(`pibake-bootacme-${process.pid}`, path.join(tmp.dir, "lab"), env.T_DDNS_TOKEN);
      mkdirSync(lab.work);
      await lab.start();
      pebbleRoot = readFileSync(lab.pebbleRoot);
      bridge = await dnsBridge(lab.dnsSocket);
      await fitAcmeToTheLab(built.image!, path.join(tmp.dir, "image-root"), path.join(lab.pki, "root.crt"));
    }, BUDGET.build + MARGIN);

    afterAll(async () => {
      held?.end(true);
      await vm?.kill();
      bridge?.close();
      await lab?.stop();
      tmp.cleanup();
    });

    it(
      "serves the own CA's certificate first, then by itself the public one, which a client trusting only the CA's root accepts; a client connected before stays connected",
      async () => {
        const d = new Deadline("boot", BUDGET.boot);
        const image = built.image!;
        vm = await bootVm({
          image,
          kernelDir: kernel,
          consoleLog: path.join(tmp.dir, "console.log"),
          forward: { mqtt: 1883, mqtts: 8883, wss: 8884, ssh: 22, nodeRed: 1880 },
          append: cmdlineForQemu(bootFile(image, "cmdline.txt")!),
          // For GUEST_HOST:53 (DNS over UDP): QEMU's restricted network would not let the guest reach this host.
          restrictNetwork: false,
          guestForward: LAB_PORTS.map((port) => ({ address: GUEST_LAB, port, command: lab!.inNs([process.execPath, RELAY, "127.0.0.1", String(port)]) })),
        });
        const booted = vm;
        const url = `mqtts://127.0.0.1:${booted.ports.mqtts}`;
        await withBootDiagnostics(booted, ssh(), async () => {
          // The broker up with the own CA's certificate (a client trusting ca.crt gets in).
          const ownOpts = { ca: ownCa, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW };
          await waitForBroker(booted, url, ownOpts, d.before("broker", STEP.publicCert + 4 * STEP.connect + 2 * STEP.ssh), { ssh: ssh() });
          const brokerAt = Date.now() - booted.startedAt;
          console.log(`boot-acme: power-on to the broker (own CA's certificate): ${(brokerAt / 1000).toFixed(1)} s`);

          // A subscriber that trusts ca.crt, connected before the public certificate arrives: it must outlive the swap.
          const c = await tryConnect(url, { ...ownOpts, clientId: "held-session" }, d.cap(STEP.connect));
          expect(c.ok, c.error).toBe(true);
          held = c.client!;
          for (const e of ["close", "offline", "disconnect", "error"] as const)
            held.on(e, () => heldEvents.push(`${e} at ${((Date.now() - booted.startedAt) / 1000).toFixed(1)} s`));
          held.on("message", (t, p) => heldMessages.push(`${t} ${p.toString()}`));
          const granted = await held.subscribeAsync("home/commands/acme", { qos: 1 });
          expect(granted.map((g) => g.qos)).toEqual([1]);
          const gets = async (message: string, ms: number) => {
            const end = Date.now() + ms;
            while (!heldMessages.includes(message) && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
            if (heldMessages.includes(message)) return;
            const log = await asRoot("journalctl -b -u mosquitto -u pibake-acme --no-pager -o short-monotonic | tail -n 40", STEP.ssh);
            throw new Error(
              `the subscriber connected before the swap did not get "${message}" within ${ms} ms (it got: ${heldMessages.join("; ") || "nothing"}; its events: ${heldEvents.join("; ") || "none"}; connected: ${held!.connected}); the guest's journal:\n${log.stdout}${log.stderr}`,
            );
          };
          await held.publishAsync("home/commands/acme", "before the swap", { qos: 1 });
          await gets("home/commands/acme before the swap", d.cap(10_000));

          // Then every few seconds a fresh client's look at the certificate served, trusting only pebble's root.
          const wait = d.before("public certificate", 2 * STEP.connect + 2 * STEP.ssh);
          const seen: string[] = [];
          let ownSeen = 0;
          let looks = 0;
          let now: Served | undefined;
          for (;;) {
            now = await served(booted.ports.mqtts!, pebbleRoot, wait.cap(STEP.connect));
            if (now.authorized) break;
            const line = `${((Date.now() - booted.startedAt) / 1000).toFixed(0)} s: ${now.issuer ?? "no certificate"} (${now.error})`;
            if (seen.at(-1)?.replace(/^\d+ s: /, "") !== line.replace(/^\d+ s: /, "")) seen.push(line);
            if (now.issuer) {
              // Until the public certificate arrives, the own CA's is served: it verifies against ca.crt.
              const mine = await served(booted.ports.mqtts!, ownCa, wait.cap(STEP.connect));
              expect(mine, `neither pebble's nor the own CA's certificate is served:\n${seen.join("\n")}`).toMatchObject({ authorized: true });
              ownSeen++;
            }
            if (booted.exited()) throw new Error(`the VM stopped; what was served:\n${seen.join("\n")}`);
            // A failed run waits an hour before the next (acme-certificate.sh's back-off): say why at once, not at the budget's end.
            const failedRun =
              ++looks % 10 === 0 &&
              /^result=failed$/m.test(
                (await sshRun(booted.ports.ssh!, "admin", built.key, "cat /var/lib/pibake/acme.status 2>/dev/null", wait.cap(STEP.ssh))).stdout,
              );
            if (failedRun || wait.remaining() < 5_000) {
              const journal = await asRoot(
                "systemctl list-timers pibake-acme.timer --no-pager; journalctl -b -u pibake-acme --no-pager -o short-monotonic | tail -n 60",
                STEP.ssh,
              );
              throw new Error(
                `${failedRun ? "pibake-acme's run failed" : `no public certificate served within ${(wait.ms / 1000).toFixed(0)} s of the broker`}; what was served:\n${seen.join("\n")}\n--- the guest's pibake-acme:\n${journal.stdout}${journal.stderr}`,
              );
            }
            await new Promise((r) => setTimeout(r, 3_000));
          }
          const publicAt = Date.now() - booted.startedAt;
          console.log(
            `boot-acme: power-on to the public certificate served: ${(publicAt / 1000).toFixed(1)} s (${((publicAt - brokerAt) / 1000).toFixed(1)} s after the broker; issuer ${now.issuer})`,
          );
          expect(ownSeen, "the own CA's certificate was served before the public one").toBeGreaterThan(0);
          expect(now.issuer).toContain("Pebble Intermediate CA");
          publicServed = true;

          // Where the time went, by the guest's monotonic clock (seconds since the kernel started).
          const journal = await asRoot(
            "journalctl -b -u pibake-acme --no-pager -o short-monotonic | grep -E 'Start|obtaining|installed|reload|Finished|Deactivated|failed' ",
            STEP.ssh,
          );
          console.log(`boot-acme: the guest's pibake-acme:\n${journal.stdout}`);

          // A strict MQTT client (only pebble's root, the name checked) logs in and publishes; the subscriber from before the swap gets it.
          const strict = await tryConnect(
            url,
            { ca: pebbleRoot, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW },
            d.cap(STEP.connect),
          );
          expect(strict.ok, strict.error).toBe(true);
          try {
            await strict.client!.publishAsync("home/commands/acme", "after the swap", { qos: 1 });
          } finally {
            strict.client!.end(true);
          }
          await gets("home/commands/acme after the swap", d.cap(10_000));
          expect(heldEvents, "the subscriber connected before the swap was not dropped (SIGHUP, no restart)").toEqual([]);
          expect(held.connected).toBe(true);
          // One mosquitto since boot: reloaded, not restarted.
          const units = await asRoot(
            "systemctl show -p NRestarts --value mosquitto; journalctl -b -u mosquitto --no-pager -o cat | grep -c -i 'reloading config' || true",
            STEP.ssh,
          );
          expect(units.stdout.trim().split("\n"), units.stderr).toEqual(["0", expect.stringMatching(/^[1-9]\d*$/)]);
        });
      },
      BUDGET.boot + MARGIN,
    );

    it(
      "pibake check with the lab's CA root (--ca-file) passes: the chain, the issuer, the renewal's state on the Pi",
      async () => {
        expect(publicServed, "not tried: the boot above did not get as far as the public certificate").toBe(true);
        const d = new Deadline("check", BUDGET.check);
        const r = await pibake(
          [
            "check",
            path.join(built.out, "..", "broker.json"),
            "127.0.0.1",
            "--lan",
            "--state",
            built.state,
            "--ca-file",
            lab!.pebbleRoot,
            "--port-tls",
            String(vm!.ports.mqtts),
            "--port-lan",
            String(vm!.ports.mqtt),
            "--port-ws",
            String(vm!.ports.wss),
            "--port-node-red",
            String(vm!.ports.nodeRed),
            "--timeout",
            "10",
            "--json",
            "--ssh",
            "--ssh-key",
            built.key,
            "--port-ssh",
            String(vm!.ports.ssh),
          ],
          { env, timeout: d.cap(STEP.check) },
        );
        const report = JSON.parse(String(r.stdout)) as CheckReport;
        console.log(`boot-acme: pibake check --ssh --ca-file:\n${report.checks.map((c) => `  ${c.status}: ${c.name}: ${c.detail}`).join("\n")}`);
        const line = (name: string) => report.checks.find((c) => c.name === name);
        expect(line("tls chain"), String(r.stdout)).toMatchObject({ status: "ok", detail: expect.stringContaining("issued by Pebble Intermediate CA") });
        expect(line("public certificate"), String(r.stdout)).toMatchObject({ status: "ok" });
        expect(unexpectedChecks(report), String(r.stdout)).toEqual([]);
        expect(r.exitCode, String(r.stderr)).toBe(0);
      },
      BUDGET.check + MARGIN,
    );
  },
);

/**
 * The test's stand-ins for the Internet, written into the image's root after the build (a
 * drop-in of the test's, outside what pibake writes; only pibake-acme.service, and the lego and
 * curl it runs, see them): freemyip.com, its name server and the CA at GUEST_LAB, which QEMU
 * forwards into the lab, and the lab's name server at GUEST_HOST (dnsBridge); the lab's root for
 * the HTTPS of pebble (lego) and of the stand-in (curl); the clock, for NTP.
 */
async function fitAcmeToTheLab(image: string, mountpoint: string, labRoot: string): Promise<void> {
  const mounted = await mountRoot(image, mountpoint, { readWrite: true });
  try {
    const dir = path.join(mountpoint, "etc/pibake-test");
    mkdirSync(dir, { recursive: true });
    copyFileSync(labRoot, path.join(dir, "lab-root.crt"));
    // lego dials the name server by the NS record's name, "ns1.freemyip.com." with its dot, which glibc matches in
    // /etc/hosts only as written so (else it would ask DNS first).
    writeFileSync(path.join(dir, "hosts"), `127.0.0.1 localhost\n${GUEST_LAB} freemyip.com pebble.test\n${GUEST_HOST} ns1.freemyip.com ns1.freemyip.com.\n`);
    writeFileSync(path.join(dir, "resolv.conf"), `nameserver ${GUEST_HOST}\n`);
    const dropIn = path.join(mountpoint, "etc/systemd/system/pibake-acme.service.d");
    mkdirSync(dropIn, { recursive: true });
    writeFileSync(
      path.join(dropIn, "50-pibake-test-lab.conf"),
      [
        "# Written by pibake's boot-acme test: the lab stands in for the Internet (test/slow/boot-acme.test.ts).",
        "[Service]",
        "BindReadOnlyPaths=/etc/pibake-test/hosts:/etc/hosts /etc/pibake-test/resolv.conf:/etc/resolv.conf",
        "Environment=LEGO_CA_CERTIFICATES=/etc/pibake-test/lab-root.crt",
        "Environment=CURL_CA_BUNDLE=/etc/pibake-test/lab-root.crt",
        "",
      ].join("\n"),
    );
    // NTP, which the guest cannot reach: like a Pi, it keeps the image's time until then (QEMU's RTC
    // is read by no one at boot: its driver is a module), and lego would take the lab's
    // certificates, made minutes ago, for "not yet valid". The clock from the RTC (the host's
    // time), early, before mosquitto, as NTP sets a Pi's: set later (an ExecStartPre of
    // pibake-acme.service, in an earlier version), the jump of hours dropped the MQTT client
    // connected before it and aged the status report. ($$: a literal $ for systemd.)
    writeFileSync(
      path.join(mountpoint, "etc/systemd/system/pibake-test-clock.service"),
      [
        "# Written by pibake's boot-acme test: the clock from QEMU's RTC, standing in for NTP (test/slow/boot-acme.test.ts).",
        "[Unit]",
        "Description=pibake test: the clock from the RTC, as NTP would set it",
        "DefaultDependencies=no",
        "After=systemd-udevd.service",
        "Before=time-sync.target mosquitto.service pibake-acme.service",
        "Wants=time-sync.target",
        "",
        "[Service]",
        "Type=oneshot",
        `ExecStart=/bin/sh -c 'for i in $$(seq 240); do [ -r /sys/class/rtc/rtc0/since_epoch ] && exec date -u -s "@$$(cat /sys/class/rtc/rtc0/since_epoch)"; sleep 0.5; done; echo "no RTC after 120 s"; exit 1'`,
        "",
      ].join("\n"),
    );
    const wants = path.join(mountpoint, "etc/systemd/system/sysinit.target.wants");
    mkdirSync(wants, { recursive: true });
    symlinkSync("/etc/systemd/system/pibake-test-clock.service", path.join(wants, "pibake-test-clock.service"));
  } finally {
    await mounted.release();
  }
}
