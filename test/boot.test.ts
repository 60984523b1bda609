import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { existsSync, readdirSync, readFileSync, copyFileSync } from "node:fs";
import path from "node:path";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { bootVm, sshRun, waitForBroker, type Vm } from "./helpers/qemu.js";
import { roundTrip, tryConnect } from "./helpers/mqtt.js";

/**
 * Proof by boot: an image made by `pibake build --base` from the test base
 * image boots under qemu-system-aarch64 and answers as a broker, checked from
 * this host the way a user's client would. `npm run test:boot` runs this file
 * alone; `npm test` runs it too. The serial console is kept in
 * $PIBAKE_BOOT_ARTIFACTS (default: the test's temp dir, printed on failure).
 */
const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64") && existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const DOMAIN = "home.freemyip.com";
const NODE_RED_PASSWORD = "NodeRed-Admin-5b7c";

describe.skipIf(!isRoot || !hasQemu)("the built image boots under QEMU and answers as a broker", () => {
  const tmp = tempDir("pibake-boot-");
  const artifacts = process.env.PIBAKE_BOOT_ARTIFACTS ?? tmp.dir;
  const key = path.join(tmp.dir, "id_ed25519");
  let image = "";
  let ca: Buffer;
  let vm: Vm | undefined;
  let firstPublishMs = 0;

  beforeAll(async () => {
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "pibake-boot-test", "-f", key]);
    ({ image, ca } = await buildForQemu(tmp.dir, readFileSync(`${key}.pub`, "utf8").trim(), (c) => {
      c.nodeRed = { enabled: false };
      c.mqtt.users[1].topics.push({ access: "readwrite", topic: "home/commands/+" });
    }));
  }, 2_400_000);

  afterAll(async () => {
    await vm?.kill();
    if (vm && artifacts !== tmp.dir) copyFileSync(path.join(tmp.dir, "console.log"), path.join(artifacts, "console.log"));
    tmp.cleanup();
  });

  it("boots and serves authenticated MQTT over TLS, with the time from power-on reported", async () => {
    vm = await bootVm({ image, kernelDir: await kernelDir(), consoleLog: path.join(tmp.dir, "console.log"), forward: { mqtt: 1883, mqtts: 8883, ssh: 22 } });
    // Bounded: a trixie guest under TCG on 2 cores reaches the broker in a few minutes at most.
    await waitForBroker(vm, `mqtts://127.0.0.1:${vm.ports.mqtts}`, { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW }, 420_000);
    const client = await tryConnect(`mqtts://127.0.0.1:${vm.ports.mqtts}`, { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW });
    expect(client.ok, client.error).toBe(true);
    // phone may read home/# and also write home/commands/+.
    expect(await roundTrip(client.client!, "home/commands/light", "on")).toBe("on");
    firstPublishMs = Date.now() - vm.startedAt;
    client.client!.end(true);
    console.log(`boot: power-on to first authenticated TLS publish: ${(firstPublishMs / 1000).toFixed(1)} s`);
  }, 480_000);

  it("refuses the wrong password, anonymous clients, TLS 1.1 and a name not in the certificate", async () => {
    const url = `mqtts://127.0.0.1:${vm!.ports.mqtts}`;
    const wrong = await tryConnect(url, { ca, servername: DOMAIN, username: "phone", password: "not-the-password" });
    expect(wrong.ok).toBe(false);
    expect(wrong.error).toMatch(/Not authorized|Bad username/i);
    const anonymous = await tryConnect(url, { ca, servername: DOMAIN });
    expect(anonymous.ok).toBe(false);
    const tls11 = await tryConnect(url, { ca, servername: DOMAIN, username: "phone", password: secretEnv.T_MQTT_PHONE_PW, minVersion: "TLSv1.1", maxVersion: "TLSv1.1", ciphers: "DEFAULT@SECLEVEL=0" });
    expect(tls11.ok).toBe(false);
    const otherName = await tryConnect(url, { ca, servername: "other.example.com", username: "phone", password: secretEnv.T_MQTT_PHONE_PW });
    expect(otherName.ok).toBe(false);
    expect(otherName.error).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID|altnames/i);
  }, 120_000);

  it("accepts the right password on the LAN port and refuses anonymous access there", async () => {
    const url = `mqtt://127.0.0.1:${vm!.ports.mqtt}`;
    const good = await tryConnect(url, { username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW });
    expect(good.ok, good.error).toBe(true);
    good.client!.end(true);
    const anonymous = await tryConnect(url, {});
    expect(anonymous.ok).toBe(false);
  }, 120_000);

  it("lets the first user in with the configured SSH key, has no failed units, and runs ddclient with its file", async () => {
    const ssh = (cmd: string) => sshRun(vm!.ports.ssh!, "admin", key, cmd);
    const who = await ssh("id -un");
    expect(who.stdout.trim(), who.stderr).toBe("admin");
    // Let the boot finish before judging units.
    await ssh("timeout 120 systemctl is-system-running --wait || true");
    const failed = await ssh("systemctl --failed --no-legend --plain");
    expect(failed.stdout.trim(), `failed units:\n${failed.stdout}`).toBe("");
    const ddclient = await ssh("systemctl is-active ddclient; sudo -n journalctl -b -u ddclient --no-pager -o cat");
    expect(ddclient.stdout.split("\n")[0]).toBe("active");
    // No Internet here: ddclient cannot learn the WAN address, which is expected; the config itself must not be warned about.
    const configWarnings = ddclient.stdout.split("\n").filter((l) => /WARNING/.test(l) && !/(CURL error|resolve host|unable to determine|could not determine|IP address|connect)/i.test(l));
    expect(configWarnings).toEqual([]);
    const address = await ssh("ip -4 -o addr show dev eth0");
    expect(address.stdout).toMatch(/inet 10\.0\.2\.15\/24/);
    const profile = await ssh("nmcli -t -f NAME,DEVICE connection show --active");
    expect(profile.stdout).toMatch(/^pibake-lan:eth0$/m);
  }, 300_000);

  it("powers off cleanly within a minute", async () => {
    const ms = await vm!.powerdown(90_000);
    console.log(`boot: clean power-off took ${(ms / 1000).toFixed(1)} s`);
    expect(vm!.console()).toMatch(/reboot: Power down|System halted|Power down/);
  }, 120_000);
});

/** `pibake build --base` from the test base image, with the Pi's address in QEMU's user network. */
async function buildForQemu(dir: string, sshKey: string, mutate: (c: Record<string, any>) => void): Promise<{ image: string; ca: Buffer }> {
  const c = validConfig();
  // QEMU's user-mode network: the broker answering at all proves the rendered NetworkManager profile was applied.
  c.network = { interface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] };
  c.user.sshKeys = [sshKey];
  mutate(c);
  const cfg = writeJson(path.join(dir, "boot.json"), c);
  const base = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/base-image.sh"), "trixie"], { timeout: 1_800_000 })).stdout.trim();
  const out = path.join(dir, "deploy");
  const build = await pibake(["build", cfg, "--base", base, "--out", out, "--state", path.join(dir, "state"), "--compress", "none"], {
    env: { ...secretEnv, T_NODE_RED_PW: NODE_RED_PASSWORD },
    timeout: 2_400_000,
  });
  expect(build.exitCode, build.stderr).toBe(0);
  return { image: path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!), ca: readFileSync(path.join(out, "ca.crt")) };
}

async function kernelDir(): Promise<string> {
  return (await execa("bash", [path.join(repoRoot, "scripts/fixtures/qemu-kernel.sh")], { timeout: 1_800_000 })).stdout.trim();
}

/**
 * Node-RED installed at build time (nodeRed.install "build"): the editor on the
 * forwarded port asks for a login and the token endpoint takes the configured
 * password. npm installs Node-RED under qemu-user during the build, which takes
 * many minutes, so this runs only with PIBAKE_BOOT_NODE_RED=1 (see README).
 */
describe.skipIf(!isRoot || !hasQemu || process.env.PIBAKE_BOOT_NODE_RED !== "1")("Node-RED in the booted image", () => {
  const tmp = tempDir("pibake-boot-nr-");
  let vm: Vm | undefined;
  let image = "";

  beforeAll(async () => {
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(tmp.dir, "key")]);
    ({ image } = await buildForQemu(tmp.dir, readFileSync(path.join(tmp.dir, "key.pub"), "utf8").trim(), (c) => {
      c.nodeRed = { install: "build", admin: { user: "admin", password: { env: "T_NODE_RED_PW" } } };
    }));
  }, 3_600_000);

  afterAll(async () => {
    await vm?.kill();
    tmp.cleanup();
  });

  it("serves the editor behind a login, and the token endpoint accepts the configured password", async () => {
    vm = await bootVm({ image, kernelDir: await kernelDir(), consoleLog: path.join(tmp.dir, "console.log"), forward: { nodeRed: 1880 } });
    const base = `http://127.0.0.1:${vm.ports.nodeRed}`;
    const deadline = Date.now() + 600_000;
    for (;;) {
      const r = await fetch(`${base}/auth/login`, { signal: AbortSignal.timeout(10_000) }).catch(() => undefined);
      if (r?.ok) break;
      if (vm.exited() || Date.now() > deadline) throw new Error(`Node-RED did not answer within 10 minutes; last console lines:\n${vm.lastConsoleLines()}`);
      await new Promise((res) => setTimeout(res, 5000));
    }
    console.log(`boot: power-on to Node-RED answering: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
    // The editor asks for a login: adminAuth of type "credentials".
    const login = (await (await fetch(`${base}/auth/login`)).json()) as { type?: string };
    expect(login.type).toBe("credentials");
    expect((await fetch(`${base}/flows`)).status).toBe(401);
    const token = async (password: string) =>
      fetch(`${base}/auth/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ client_id: "node-red-admin", grant_type: "password", scope: "*", username: "admin", password }),
      });
    expect((await token("wrong-password-1")).status).toBe(403);
    const ok = await token(NODE_RED_PASSWORD);
    expect(ok.status).toBe(200);
    const { access_token } = (await ok.json()) as { access_token: string };
    expect((await fetch(`${base}/flows`, { headers: { authorization: `Bearer ${access_token}` } })).status).toBe(200);
  }, 900_000);
});
