import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { X509Certificate } from "node:crypto";
import tls from "node:tls";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { bootVm, cmdlineForQemu, Deadline, sshRun, waitForBroker, withBootDiagnostics, type Vm } from "./helpers/qemu.js";
import { bootFile } from "./helpers/image.js";
import { shellQuote } from "../src/render/templates.js";
import { tryConnect } from "./helpers/mqtt.js";

/**
 * `pibake push` against a running Pi: an image built by `pibake build --base`
 * from the test base image boots under qemu-system-aarch64; a push of a config
 * with a new domain and a changed MQTT password then changes the running
 * broker without a reflash (its certificate, its password file), keeping the
 * retained messages; and a push whose broker cannot start (the new LAN port is
 * already taken on the Pi) is rolled back to the previous files.
 */
const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64") && existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const DOMAIN = "home.freemyip.com";
const NEW_DOMAIN = "new-home.freemyip.com";
const THIRD_DOMAIN = "third-home.freemyip.com";
const NEW_SENSORS_PW = "Sensors-Secret-Pushed-4d2e";
const SQUATTED_PORT = 1884;

const MARGIN = 40_000;
const STEP = {
  keygen: 30_000,
  fixture: 1_800_000,
  build: 2_400_000,
  brokerWait: 600_000,
  connect: 15_000,
  roundTrip: 10_000,
  ssh: 30_000,
  settle: 185_000,
  // pibake push: its own bounds are 90 s to read the Pi and 240 s to apply (roll-back included), plus rendering.
  push: 400_000,
};
const BUDGET = {
  build: 3_600_000 - MARGIN,
  boot: STEP.brokerWait + STEP.connect + STEP.roundTrip + STEP.settle + STEP.ssh,
  push: STEP.push + 8 * STEP.connect + 4 * STEP.ssh,
  rollback: STEP.push + 6 * STEP.connect + 4 * STEP.ssh,
};

describe.skipIf(!isRoot || !hasQemu)("pibake push to a Pi booted under QEMU", () => {
  const tmp = tempDir("pibake-push-");
  const key = path.join(tmp.dir, "key");
  const state = path.join(tmp.dir, "state");
  let vm: Vm | undefined;
  let image = "";
  let kernel = "";
  let ca: Buffer = Buffer.alloc(0);

  const env = { ...secretEnv, T_NODE_RED_PW: "NodeRed-Admin-5b7c", T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" };
  const config = (mutate: (c: Record<string, any>) => void = () => undefined) => {
    const c = validConfig();
    // QEMU's user-mode network, as in test/boot.test.ts.
    c.network = { interface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] };
    c.user.sshKeys = [readFileSync(`${key}.pub`, "utf8").trim()];
    // As in test/boot.test.ts: installing Node-RED's packages under qemu-user would take most of the budget.
    c.nodeRed = { enabled: false };
    mutate(c);
    return c;
  };
  const sudo = (command: string) => `printf '%s\\n' ${shellQuote(secretEnv.T_USER_PW)} | sudo -S -p '' sh -c ${shellQuote(command)}`;
  /** The certificate the broker serves for `servername`, and whether it verifies against ca.crt for that name. */
  const served = (servername: string, ms: number) =>
    new Promise<{ cert: X509Certificate; authorized: boolean; error?: string }>((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: vm!.ports.mqtts!, servername, ca, rejectUnauthorized: false });
      const timer = setTimeout(() => (socket.destroy(), reject(new Error(`no TLS handshake within ${ms} ms`))), ms);
      socket.once("secureConnect", () => {
        clearTimeout(timer);
        const cert = new X509Certificate(socket.getPeerCertificate(true).raw);
        resolve({ cert, authorized: socket.authorized, ...(socket.authorizationError ? { error: String(socket.authorizationError) } : {}) });
        socket.destroy();
      });
      socket.once("error", (e) => (clearTimeout(timer), reject(e)));
    });

  beforeAll(async () => {
    const d = new Deadline("build", BUDGET.build);
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key], { timeout: d.cap(STEP.keygen) });
    const cfg = writeJson(path.join(tmp.dir, "broker.json"), config());
    const base = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/base-image.sh"), "trixie"], { timeout: d.cap(STEP.fixture) })).stdout.trim();
    const out = path.join(tmp.dir, "deploy");
    const build = await pibake(["build", cfg, "--base", base, "--out", out, "--state", state, "--compress", "none"], { env, timeout: d.cap(STEP.build) });
    expect(build.exitCode, build.stderr).toBe(0);
    image = path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!);
    ca = readFileSync(path.join(out, "ca.crt"));
    kernel = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/qemu-kernel.sh")], { timeout: d.cap(STEP.fixture) })).stdout.trim();
  }, BUDGET.build + MARGIN);

  afterAll(async () => {
    await vm?.kill();
    tmp.cleanup();
  });

  it("boots, and keeps a retained message", async () => {
    const d = new Deadline("boot", BUDGET.boot);
    vm = await bootVm({ image, kernelDir: kernel, consoleLog: path.join(tmp.dir, "console.log"), forward: { mqtt: 1883, mqtts: 8883, ssh: 22 }, append: cmdlineForQemu(bootFile(image, "cmdline.txt")!) });
    const booted = vm;
    const ssh = { port: booted.ports.ssh!, user: "admin", key };
    const url = `mqtts://127.0.0.1:${booted.ports.mqtts}`;
    await withBootDiagnostics(booted, ssh, async () => {
      await waitForBroker(booted, url, { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW }, d.before("broker wait", STEP.connect + STEP.roundTrip + STEP.settle + STEP.ssh), { ssh });
      const sensors = await tryConnect(url, { ca, servername: DOMAIN, rejectUnauthorized: true, username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW }, d.cap(STEP.connect));
      expect(sensors.ok, sensors.error).toBe(true);
      try {
        await sensors.client!.publishAsync("home/sensors/kitchen", "21.5", { qos: 1, retain: true });
      } finally {
        sensors.client!.end(true);
      }
      // The first boot's late work (cloud-init, key generation) done, so that the push meets a settled Pi.
      await sshRun(ssh.port, "admin", key, "timeout 180 systemctl is-system-running --wait || true", d.cap(STEP.settle));
    });
  }, BUDGET.boot + MARGIN);

  /** The retained message, read by phone (home/#) over TLS for `servername`. */
  const retained = async (servername: string, ms: number): Promise<string | undefined> => {
    const phone = await tryConnect(`mqtts://127.0.0.1:${vm!.ports.mqtts}`, { ca, servername, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW }, ms);
    expect(phone.ok, phone.error).toBe(true);
    try {
      return await new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), ms);
        phone.client!.on("message", (t, p) => {
          if (t === "home/sensors/kitchen") (clearTimeout(timer), resolve(p.toString()));
        });
        void phone.client!.subscribeAsync("home/sensors/kitchen", { qos: 1 });
      });
    } finally {
      phone.client!.end(true);
    }
  };

  it("pushes a new domain and a changed MQTT password: the new certificate is served, the old password refused, the retained message kept", async () => {
    const d = new Deadline("push", BUDGET.push);
    const cfg = writeJson(path.join(tmp.dir, "broker.json"), config((c) => {
      c.tls.domain = NEW_DOMAIN;
      c.mqtt.users[0].password = { env: "T_MQTT_SENSORS_PW_NEW" };
    }));
    const started = Date.now();
    const push = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state], { env: { ...env, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW }, timeout: d.cap(STEP.push) });
    const ms = Date.now() - started;
    const said = `${push.stdout}\n${push.stderr}`;
    expect(push.exitCode, said).toBe(0);
    console.log(`push: a new domain and password pushed end to end in ${(ms / 1000).toFixed(1)} s\n${push.stdout}`);
    // The plan names files, never their contents.
    expect(said).toMatch(/~ \/etc\/mosquitto\/certs\/server\.crt: content/);
    expect(said).toMatch(/~ \/etc\/mosquitto\/passwd: content/);
    expect(said).toMatch(/restart mosquitto/);
    for (const secret of [...Object.values(secretEnv), NEW_SENSORS_PW]) expect(said).not.toContain(secret);
    // The host key was remembered in the state directory's known_hosts.
    expect(readFileSync(path.join(state, "known_hosts"), "utf8")).toMatch(/ssh-ed25519 /);

    const now = await served(NEW_DOMAIN, d.cap(STEP.connect));
    expect(now.authorized, now.error).toBe(true);
    expect(now.cert.subjectAltName).toContain(`DNS:${NEW_DOMAIN}`);
    expect(now.cert.subjectAltName).not.toContain(`DNS:${DOMAIN}`);
    const url = `mqtts://127.0.0.1:${vm!.ports.mqtts}`;
    const old = await tryConnect(url, { ca, servername: NEW_DOMAIN, rejectUnauthorized: true, username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW }, d.cap(STEP.connect));
    expect(old.ok).toBe(false);
    expect(old.error).toMatch(/Not authorized|Bad username/i);
    const fresh = await tryConnect(url, { ca, servername: NEW_DOMAIN, rejectUnauthorized: true, username: "sensors", password: NEW_SENSORS_PW }, d.cap(STEP.connect));
    expect(fresh.ok, fresh.error).toBe(true);
    fresh.client!.end(true);
    expect(await retained(NEW_DOMAIN, d.cap(STEP.connect))).toBe("21.5");

    // The record on the Pi: this config's digest and this certificate.
    const record = await sshRun(vm!.ports.ssh!, "admin", key, "cat /var/lib/pibake/push.json", d.cap(STEP.ssh));
    const pushed = JSON.parse(record.stdout) as { domain: string; certificate: { sha256Fingerprint: string }; config: { digest: string } };
    expect(pushed.domain).toBe(NEW_DOMAIN);
    expect(pushed.certificate.sha256Fingerprint).toBe(now.cert.fingerprint256);
    expect(pushed.config.digest).toMatch(/^sha256:[0-9a-f]{64}$|^[0-9a-f]{64}$/);

    // The same config again: nothing to push.
    const again = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state], { env: { ...env, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW }, timeout: d.cap(STEP.push) });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/nothing to push/);
  }, BUDGET.push + MARGIN);

  it("rolls back a push whose broker cannot start (its new LAN port is taken on the Pi): the command fails saying so, the previous files serve again", async () => {
    const d = new Deadline("roll-back", BUDGET.rollback);
    // Something else holds the port the next config gives mosquitto's LAN listener: a second broker, made by hand on the Pi.
    const squat = await sshRun(vm!.ports.ssh!, "admin", key, sudo(`systemd-run --unit=pibake-test-squatter mosquitto -p ${SQUATTED_PORT} && sleep 2 && ss -Hltn 'sport = :${SQUATTED_PORT}'`), d.cap(STEP.ssh));
    expect(squat.stdout, squat.stderr).toMatch(new RegExp(`:${SQUATTED_PORT}\\b`));
    const cfg = writeJson(path.join(tmp.dir, "broker.json"), config((c) => {
      c.tls.domain = THIRD_DOMAIN;
      c.mqtt.lanPort = SQUATTED_PORT;
      c.mqtt.users[0].password = { env: "T_MQTT_SENSORS_PW_NEW" };
    }));
    const push = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state], { env: { ...env, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW }, timeout: d.cap(STEP.push) });
    const said = `${push.stdout}\n${push.stderr}`;
    expect(push.exitCode, said).toBe(1);
    console.log(`push: the rolled-back push said:\n${said}`);
    expect(push.stderr).toMatch(/the push failed and was rolled back/);
    expect(said).toMatch(/rolled back: the previous files are in place and mosquitto is healthy again/);

    // The broker answers with the files of the first push: its certificate, for its domain.
    const now = await served(NEW_DOMAIN, d.cap(STEP.connect));
    expect(now.authorized, now.error).toBe(true);
    expect(now.cert.subjectAltName).not.toContain(`DNS:${THIRD_DOMAIN}`);
    const lan = await tryConnect(`mqtt://127.0.0.1:${vm!.ports.mqtt}`, { username: "sensors", password: NEW_SENSORS_PW }, d.cap(STEP.connect));
    expect(lan.ok, lan.error).toBe(true);
    lan.client!.end(true);
    expect(await retained(NEW_DOMAIN, d.cap(STEP.connect))).toBe("21.5");
    const record = await sshRun(vm!.ports.ssh!, "admin", key, "cat /var/lib/pibake/push.json; ls -a /etc/mosquitto/conf.d /var/lib/pibake", d.cap(STEP.ssh));
    expect(record.stdout).toContain(`"domain": "${NEW_DOMAIN}"`);
    // Nothing staged is left behind.
    expect(record.stdout).not.toMatch(/\.pibake-push\.|push-work\./);
    await sshRun(vm!.ports.ssh!, "admin", key, sudo("systemctl stop pibake-test-squatter"), d.cap(STEP.ssh));
  }, BUDGET.rollback + MARGIN);
});
