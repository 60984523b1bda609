import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { existsSync, mkdirSync, readdirSync, readFileSync, copyFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { X509Certificate } from "node:crypto";
import tls from "node:tls";
import path from "node:path";
import { FIXTURE_TIMEOUT_MS, pibake, repoRoot, secretEnv, tempDir, writeJson } from "./helpers/cli.js";
import { bootVm, cmdlineForQemu, Deadline, DIAGNOSTICS_SSH_MS, sshRun, waitForBroker, withBootDiagnostics, type Vm } from "./helpers/qemu.js";
import { bootFile, mountRoot } from "./helpers/image.js";
import { NPM_RELEASE } from "../src/registry/node-red.js";
import { STATE_FILES } from "../src/secrets/node-red.js";
import { NODE_RED_INSTALL } from "../src/check/facts.js";
import { unexpectedChecks } from "./helpers/check-report.js";
import { shellQuote } from "../src/host/shell.js";
import { brokerImageConfig, BROKER_DOMAIN, takeOver } from "./helpers/broker-image.js";
import { roundTrip, tryConnect } from "./helpers/mqtt.js";

/**
 * Proof by boot: an image made by `pibake build --base` from the faithful
 * stand-in for Raspberry Pi OS Lite (scripts/fixtures/base-image.sh: its
 * first-boot wizard, cloud-init, machine-id "uninitialized" and so systemd's
 * first-boot presets, no SSH host keys, the radio off) boots under
 * qemu-system-aarch64 with the kernel command line of its cmdline.txt, comes
 * up as configured and answers as a broker, checked from this host the way a
 * user's client would. `npm run test:boot` runs this file
 * alone (and builds the image); `npm test` runs it too, booting the image that
 * base-image.test.ts built from the same config (test/helpers/broker-image.ts). The serial console is kept in
 * $PIBAKE_BOOT_ARTIFACTS (default: the test's temp dir, printed on failure).
 */
const isRoot = process.getuid?.() === 0;
/** PIBAKE_SLOW_TESTS=1 (as `npm run test:slow` sets it): wait for the first boot's Node-RED install to finish. */
const SLOW = process.env.PIBAKE_SLOW_TESTS === "1";
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64") && existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const DOMAIN = BROKER_DOMAIN;
const NODE_RED_PASSWORD = "NodeRed-Admin-5b7c";
const NEW_DOMAIN = "new-home.freemyip.com";
const THIRD_DOMAIN = "third-home.freemyip.com";
const NEW_SENSORS_PW = "Sensors-Secret-Pushed-4d2e";
/** The port a push moves mosquitto's LAN listener to, held by another program on the Pi (the image has no WebSockets LAN listener). */
const SQUATTED_PORT = 1884;

/**
 * Time budgets (ms). Each `it`/hook below makes a Deadline of its budget when
 * it starts and hands every wait `d.cap(step)`: no wait runs past the budget,
 * however the steps add up. The runner's timeout is the budget plus MARGIN,
 * which leaves room for the diagnostics of a failed step (one SSH attempt of
 * DIAGNOSTICS_SSH_MS, 25 s, plus reading the console) before vitest's own
 * timeout, which would report none of them.
 */
const MARGIN = 40_000;
/** The SD card the image is booted from: 8 GB, a small card. */
const CARD_BYTES = 8e9;
const STEP = {
  keygen: 30_000,
  fixture: FIXTURE_TIMEOUT_MS, // each of base-image.sh and qemu-kernel.sh (they may wait on another run's lock)
  build: 2_400_000, // pibake build --base
  brokerWait: 600_000, // power-on until the broker takes the phone's TLS login (cloud-init's first boot included)
  connect: 15_000, // one tryConnect
  roundTrip: 10_000, // subscribe + publish + the message back
  sshLogin: 60_000, // the first SSH command after boot
  settle: 185_000, // `timeout 180 systemctl is-system-running --wait`, plus SSH
  ssh: 30_000, // every later SSH command
  powerdown: 90_000,
  nodeRedWait: 600_000, // power-on until the Node-RED editor answers
  nodeRedFirstBootWait: 1_500_000, // this step's start until the editor answers, when the first boot installs it (21 min from power-on measured on a loaded host)
  http: 10_000, // one HTTP request to Node-RED
  check: 60_000, // pibake check (its own waits stay under 25 s)
  // pibake push: its own bounds are 90 s to read the Pi and 240 s to apply (roll-back included), plus rendering.
  push: 400_000,
};
const BUDGET = {
  /** beforeAll: the two fixtures (cold, each up to its timeout) and the build. */
  build: 2 * FIXTURE_TIMEOUT_MS + STEP.build - MARGIN,
  boot: STEP.brokerWait + STEP.connect + STEP.roundTrip, // 445 s
  refusals: 4 * STEP.connect, // 60 s
  lan: 2 * STEP.connect, // 30 s
  sshChecks: STEP.sshLogin + STEP.settle + 6 * STEP.ssh, // 425 s
  firstBoot: 2 * STEP.settle + 8 * STEP.ssh, // 610 s
  defences: 3 * STEP.connect + STEP.roundTrip + 4 * STEP.ssh + STEP.settle, // 340 s
  check: STEP.check,
  samePush: STEP.ssh + STEP.push,
  checkAfterPush: 2 * STEP.check,
  push: STEP.connect + STEP.push * 2 + 8 * STEP.connect + 4 * STEP.ssh,
  rollback: STEP.push + 6 * STEP.connect + 4 * STEP.ssh,
  powerdown: STEP.powerdown, // 90 s
  nodeRed: STEP.nodeRedWait + 6 * STEP.http, // 660 s
  nodeRedFirstBoot: 5 * STEP.ssh + STEP.connect + STEP.roundTrip, // 175 s
  /** Under TCG, npm's install of Node-RED and the dashboard took 21 and 25 minutes after power-on on a loaded host; the steps above take part of it. */
  nodeRedEditor: STEP.nodeRedFirstBootWait + 8 * STEP.http + STEP.ssh, // 1610 s
};
if (MARGIN < DIAGNOSTICS_SSH_MS + 10_000) throw new Error("MARGIN leaves no room for the diagnostics");

describe.skipIf(!isRoot || !hasQemu)("the built image boots under QEMU and answers as a broker", () => {
  const tmp = tempDir("pibake-boot-");
  const artifacts = process.env.PIBAKE_BOOT_ARTIFACTS ?? tmp.dir;
  const key = path.join(tmp.dir, "id_ed25519");
  let image = "";
  let ca: Buffer;
  let vm: Vm | undefined;
  let kernel = "";
  let firstPublishMs = 0;
  let imageHostKeys: string[] = [];

  beforeAll(async () => {
    const d = new Deadline("build", BUDGET.build);
    // In a full run, base-image.test.ts has built this very image (the same config, its own key) and hands it over.
    const handed = { image: path.join(tmp.dir, "broker.img"), state: path.join(tmp.dir, "state"), config: path.join(tmp.dir, "boot.json"), key };
    if (takeOver(handed)) {
      image = handed.image;
      ca = readFileSync(path.join(handed.state, "ca.crt"));
      console.log("boot: booting the image base-image.test.ts built");
    } else {
      await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "pibake-boot-test", "-f", key], { timeout: d.cap(STEP.keygen) });
      ({ image, ca } = await buildForQemu(tmp.dir, readFileSync(`${key}.pub`, "utf8").trim(), d, () => {}));
    }
    kernel = await kernelDir(d);
    // What the image file holds, before any boot: no host keys, so that every Pi makes its own.
    const mounted = await mountRoot(image, path.join(tmp.dir, "image-root"));
    try {
      imageHostKeys = readdirSync(path.join(tmp.dir, "image-root/etc/ssh")).filter((f) => f.startsWith("ssh_host_"));
    } finally {
      await mounted.release();
    }
    await fitFirstBootToThisNetwork(image, path.join(tmp.dir, "image-root"));
    // A card is larger than the image: rpi-resize grows the root file system to fill it on the first boot, as on a
    // Pi. Without the room the Pi would have, Node-RED's install leaves the image's own margin nearly full.
    if (statSync(image).size < CARD_BYTES) truncateSync(image, CARD_BYTES);
  }, BUDGET.build + MARGIN);

  afterAll(async () => {
    await vm?.kill();
    if (vm && artifacts !== tmp.dir) copyFileSync(path.join(tmp.dir, "console.log"), path.join(artifacts, "console.log"));
    tmp.cleanup();
  });

  it(
    "boots and serves authenticated MQTT over TLS, with the time from power-on reported",
    async () => {
      const d = new Deadline("boot", BUDGET.boot);
      vm = await bootVm({
        image,
        kernelDir: kernel,
        consoleLog: path.join(tmp.dir, "console.log"),
        forward: { mqtt: 1883, mqtts: 8883, wss: 8884, ssh: 22, nodeRed: 1880 },
        restrictNetwork: false,
        append: cmdlineForQemu(bootFile(image, "cmdline.txt")!),
      });
      const booted = vm;
      const ssh = { port: booted.ports.ssh!, user: "admin", key };
      const url = `mqtts://127.0.0.1:${booted.ports.mqtts}`;
      const opts = { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW };
      // A failure in here reports the console's last lines, the failed units and queued jobs (over SSH) and the time since power-on.
      await withBootDiagnostics(booted, ssh, async () => {
        // Bounded: a trixie guest under TCG on 2 cores, cloud-init's first boot included, reaches the broker in a few minutes.
        // The wait ends early enough for the connect and the round trip that follow it.
        await waitForBroker(booted, url, opts, d.before("broker wait", STEP.connect + STEP.roundTrip), { ssh });
        const client = await tryConnect(url, opts, d.cap(STEP.connect));
        expect(client.ok, client.error).toBe(true);
        try {
          // phone may read home/# and also write home/commands/+.
          expect(await roundTrip(client.client!, "home/commands/light", "on", d.cap(STEP.roundTrip))).toBe("on");
          firstPublishMs = Date.now() - booted.startedAt;
        } finally {
          client.client!.end(true);
        }
      });
      console.log(`boot: power-on to first authenticated TLS publish: ${(firstPublishMs / 1000).toFixed(1)} s`);
    },
    BUDGET.boot + MARGIN,
  );

  it(
    "refuses the wrong password, anonymous clients, TLS 1.1 and a name not in the certificate",
    async () => {
      const d = new Deadline("refusals", BUDGET.refusals);
      const url = `mqtts://127.0.0.1:${vm!.ports.mqtts}`;
      const wrong = await tryConnect(url, { ca, servername: DOMAIN, username: "phone", password: "not-the-password" }, d.cap(STEP.connect));
      expect(wrong.ok).toBe(false);
      expect(wrong.error).toMatch(/Not authorized|Bad username/i);
      const anonymous = await tryConnect(url, { ca, servername: DOMAIN }, d.cap(STEP.connect));
      expect(anonymous.ok).toBe(false);
      const tls11 = await tryConnect(
        url,
        {
          ca,
          servername: DOMAIN,
          username: "phone",
          password: secretEnv.T_MQTT_PHONE_PW,
          minVersion: "TLSv1.1",
          maxVersion: "TLSv1.1",
          ciphers: "DEFAULT@SECLEVEL=0",
        },
        d.cap(STEP.connect),
      );
      expect(tls11.ok).toBe(false);
      const otherName = await tryConnect(
        url,
        { ca, servername: "other.example.com", username: "phone", password: secretEnv.T_MQTT_PHONE_PW },
        d.cap(STEP.connect),
      );
      expect(otherName.ok).toBe(false);
      expect(otherName.error).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID|altnames/i);
    },
    BUDGET.refusals + MARGIN,
  );

  it(
    "accepts the right password on the LAN port and refuses anonymous access there",
    async () => {
      const d = new Deadline("LAN port", BUDGET.lan);
      const url = `mqtt://127.0.0.1:${vm!.ports.mqtt}`;
      const good = await tryConnect(url, { username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW }, d.cap(STEP.connect));
      expect(good.ok, good.error).toBe(true);
      good.client!.end(true);
      const anonymous = await tryConnect(url, {}, d.cap(STEP.connect));
      expect(anonymous.ok).toBe(false);
    },
    BUDGET.lan + MARGIN,
  );

  it(
    "lets the first user in with the configured SSH key, has no failed units, and runs ddclient with its file",
    async () => {
      const d = new Deadline("SSH checks", BUDGET.sshChecks);
      const ssh = (cmd: string, ms = STEP.ssh) => sshRun(vm!.ports.ssh!, "admin", key, cmd, d.cap(ms));
      const who = await ssh("id -un", STEP.sshLogin);
      expect(who.stdout.trim(), who.stderr).toBe("admin");
      // Let the boot finish before judging units.
      await ssh("timeout 180 systemctl is-system-running --wait || true", STEP.settle);
      const failed = await ssh("systemctl --failed --no-legend --plain");
      expect(failed.stdout.trim(), `failed units:\n${failed.stdout}`).toBe("");
      const ddclient = await ssh(`systemctl is-active ddclient; ${sudo("journalctl -b -u ddclient --no-pager -o cat")}`);
      expect(ddclient.stdout.split("\n")[0]).toBe("active");
      // No Internet here: ddclient cannot learn the WAN address, which is expected; the config itself must not be warned about.
      const configWarnings = ddclient.stdout
        .split("\n")
        .filter((l) => /WARNING/.test(l) && !/(CURL error|resolve host|unable to determine|could not determine|IP address|connect)/i.test(l));
      expect(configWarnings).toEqual([]);
      // The image's own ddclient (trixie's, not the host's) parses the file and finds the host and its protocol; -noexec sends nothing.
      const parsed = await ssh(
        `${sudo("ddclient -file /etc/ddclient.conf -noexec -debug -verbose -foreground -daemon=0 -cache /tmp/pibake-ddclient.cache")} 2>&1 | grep -a -F 'home.freemyip.com' | grep -a -i -E 'protocol|host' || true`,
      );
      expect(parsed.stdout, `the image's ddclient did not report home.freemyip.com with its protocol:\n${parsed.stdout}${parsed.stderr}`).toMatch(
        /home\.freemyip\.com/,
      );
      // The report on the boot partition, for a user who can only read the card.
      const status = await ssh("systemctl show -p Result --value pibake-status.service; cat /boot/firmware/pibake-status.txt");
      const [result, ...report] = status.stdout.split("\n");
      expect(result, status.stderr).toBe("success");
      const text = report.join("\n");
      expect(text).toMatch(/^pibake \S+ status report, written \d{4}-\d\d-\d\dT/m);
      expect(text).toMatch(/^image: +mqtt-broker \(trixie, arm64\), config sha256:[0-9a-f]{64}$/m);
      expect(text).toMatch(/^ {2}eth0 10\.0\.2\.15\/24$/m);
      expect(text).toMatch(/^mosquitto: active$/m);
      expect(text).toMatch(/^ {2}LAN port 1883: listening$/m);
      expect(text).toMatch(/^ {2}TLS port 8883: listening$/m);
      expect(text).toMatch(/DNS:home\.freemyip\.com/);
      expect(text).toMatch(/^ddclient: active$/m);
      expect(text).toMatch(/^failed units:$/m);
      for (const secret of Object.values(secretEnv)) expect(text).not.toContain(secret);
      const address = await ssh("ip -4 -o addr show dev eth0");
      expect(address.stdout).toMatch(/inet 10\.0\.2\.15\/24/);
      const profile = await ssh("nmcli -t -f NAME,DEVICE connection show --active");
      expect(profile.stdout).toMatch(/^pibake-lan:eth0$/m);
    },
    BUDGET.sshChecks + MARGIN,
  );

  it(
    "comes up as configured on the first boot of a Raspberry Pi OS image: a real shell, no second user, no wizard, cloud-init done, its own host keys, the radio on",
    async () => {
      const d = new Deadline("first boot", BUDGET.firstBoot);
      const ssh = (cmd: string, ms = STEP.ssh) => sshRun(vm!.ports.ssh!, "admin", key, cmd, d.cap(ms));
      // The login runs the user's shell: bash, not /usr/sbin/nologin ("This account is currently not available").
      const shell = await ssh('echo "$0 $BASH_VERSION"; getent passwd admin | cut -d: -f7');
      expect(shell.stdout, shell.stderr).toMatch(/^-?bash \d+\.\d+\S*\n\/bin\/bash$/);
      // No second user (cloud-init's default user "pi"), and the password works: sudo takes it.
      const users = await ssh("getent passwd | awk -F: '$3 >= 1000 && $3 < 65534 {print $1}'");
      expect(users.stdout).toBe("admin");
      const root = await ssh(sudo("id -un; passwd -S admin | cut -d' ' -f2"));
      expect(root.stdout, root.stderr).toBe("root\nP");
      expect((await ssh("hostname")).stdout).toBe("broker");
      // The wizard is masked, so systemd's first-boot presets could not enable it, and it never ran.
      const wizard = await ssh(
        "systemctl is-enabled userconfig.service; systemctl show -p ActiveEnterTimestampMonotonic --value userconfig.service; test -e /var/lib/userconf-pi/wizard-ran && echo ran || echo never ran",
      );
      expect(wizard.stdout).toBe("masked\n0\nnever ran");
      // This was systemd's first boot (machine-id "uninitialized" in the image): it applied the unit presets and ran
      // the first-boot-only units. And cloud-init finished without errors or warnings: read whole, since "status"
      // and "errors" say done and [] for a degraded boot too (a warning such as "empty cloud config" is a
      // recoverable error, in extended_status and the exit code 2).
      const first = await ssh(
        `${sudo("journalctl -b -o cat -t systemd | grep -c 'Populated /etc with preset unit settings'")}; systemctl show -p ConditionResult --value sshd-keygen.service; ` +
          'timeout 120 cloud-init status --wait >/dev/null; cloud-init status --format json; echo "exit $?"',
        STEP.settle,
      );
      const [presetsApplied, keygenRan, ...json] = first.stdout.split("\n");
      expect({ presetsApplied, keygenRan }, first.stderr).toEqual({ presetsApplied: "1", keygenRan: "yes" });
      const statusExit = json.pop();
      const cloudInit = JSON.parse(json.join("\n")) as {
        status: string;
        extended_status?: string;
        errors: string[];
        recoverable_errors?: Record<string, string[]>;
      };
      expect(
        {
          exit: statusExit,
          status: cloudInit.status,
          extended: cloudInit.extended_status,
          errors: cloudInit.errors,
          recoverable: cloudInit.recoverable_errors,
        },
        first.stdout,
      ).toEqual({ exit: "exit 0", status: "done", extended: "done", errors: [], recoverable: {} });
      // Host keys were made on this boot (the image file held none).
      expect(imageHostKeys).toEqual([]);
      const keys = await ssh(
        "ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'; echo $(( $(stat -c %Y /etc/ssh/ssh_host_ed25519_key) - $(date -d \"$(uptime -s)\" +%s) ))",
      );
      const [keyCount, madeAfterBoot] = keys.stdout.trim().split("\n").map(Number);
      expect(keyCount).toBeGreaterThanOrEqual(3);
      expect(madeAfterBoot).toBeGreaterThanOrEqual(-2);
      // Wi-Fi configured: NetworkManager's radio switch is on (the image had it off), and both profiles are there.
      expect((await ssh("nmcli radio wifi")).stdout).toBe("enabled");
      expect((await ssh("nmcli -t -f NAME connection show")).stdout).toMatch(/^pibake-wifi$/m);
      // The report on the card says what these checks saw, once refreshed as pibake-status.timer does after the first boot's late work.
      // Given time: the report's checks share the Pi with the first boot's npm install.
      const refreshed = await ssh(`${sudo("systemctl start pibake-status.service")}; cat /boot/firmware/pibake-status.txt`, STEP.settle);
      const text = refreshed.stdout;
      expect(text, `${refreshed.stderr}${refreshed.timedOut ? " (timed out)" : ""}`).toMatch(/^ {2}user admin: shell \/bin\/bash, password usable$/m);
      expect(text).toMatch(/^ {2}other users: \(none\)$/m);
      expect(text).toMatch(/^ {2}first-boot wizard \(userconfig\.service\): masked$/m);
      expect(text).toMatch(/^ {2}cloud-init: done$/m);
      expect(text).toMatch(/^ {2}SSH host keys made: \d{4}-\d\d-\d\dT/m);
      expect(text).toMatch(/^ {2}Wi-Fi radio: enabled$/m);
    },
    BUDGET.firstBoot + MARGIN,
  );

  it(
    "defends itself on the Internet: the rendered firewall loaded, fail2ban and unattended-upgrades running, mosquitto logging to the journal, WebSockets over TLS",
    async () => {
      const d = new Deadline("Internet defences", BUDGET.defences);
      const ssh = (cmd: string, ms = STEP.ssh) => sshRun(vm!.ports.ssh!, "admin", key, cmd, d.cap(ms));
      // A browser's client through the forwarded port: wss://, trusting only ca.crt, the name checked.
      const wss = await tryConnect(
        `wss://127.0.0.1:${vm!.ports.wss}`,
        { username: "phone", password: secretEnv.T_MQTT_PHONE_PW, wsOptions: { ca, servername: DOMAIN, rejectUnauthorized: true } } as never,
        d.cap(STEP.connect),
      );
      expect(wss.ok, wss.error).toBe(true);
      try {
        expect(await roundTrip(wss.client!, "home/commands/door", "over wss", d.cap(STEP.roundTrip))).toBe("over wss");
      } finally {
        wss.client!.end(true);
      }
      const wrong = await tryConnect(
        `wss://127.0.0.1:${vm!.ports.wss}`,
        { username: "phone", password: "not-the-password", wsOptions: { ca, servername: DOMAIN, rejectUnauthorized: true } } as never,
        d.cap(STEP.connect),
      );
      expect(wrong.ok).toBe(false);

      const units = await ssh("systemctl is-active nftables fail2ban unattended-upgrades mosquitto");
      expect(units.stdout, units.stderr).toBe("active\nactive\nactive\nactive");
      // The ruleset the kernel holds is pibake's, from the rendered file: its table, the home network from
      // network.address, the Internet-open ports with the limit on new connections.
      const rules = (await ssh(sudo("nft list ruleset"))).stdout;
      expect(rules).toMatch(/^table inet pibake \{/m);
      expect(rules).toMatch(/10\.0\.2\.0\/24/);
      expect(rules).toMatch(/policy drop;/);
      expect(rules).toMatch(/8883/);
      expect(rules).toMatch(/8884/);
      expect(rules).toMatch(/limit rate over 10\/minute burst 20 packets/);
      expect(rules).toMatch(/set new_internet4 \{/);
      const jails = (await ssh(sudo("fail2ban-client status"))).stdout;
      expect(jails).toMatch(/Jail list:.*pibake-mosquitto/);
      expect(jails).toMatch(/Jail list:.*sshd/);
      // Mosquitto's lines are in the journal, with the clients' addresses fail2ban reads; nothing grows under /var/log/mosquitto.
      const logs = await ssh(
        `${sudo("journalctl -b -u mosquitto -o cat --no-pager | grep -c 'New connection from'")}; ${sudo("find /var/log/mosquitto -type f -size +0c")}`,
      );
      const [connections, ...files] = logs.stdout.split("\n");
      expect(Number(connections), logs.stderr).toBeGreaterThan(0);
      expect(files.filter(Boolean)).toEqual([]);
      // unattended-upgrades reads the rendered origins (its own dry run, on the Pi).
      const origins = await ssh(sudo("unattended-upgrade --dry-run --debug 2>&1 | grep -m1 'Allowed origins are:'"), STEP.settle);
      expect(origins.stdout).toMatch(/origin=Debian,codename=trixie-security,label=Debian-Security/);
    },
    BUDGET.defences + MARGIN,
  );

  it(
    "starts its first boot's install: npm's own release from the registry, checked against the pinned integrity, then Node-RED, at low priority beside the broker",
    async () => {
      const d = new Deadline("Node-RED first boot", BUDGET.nodeRedFirstBoot);
      const booted = vm!;
      const ssh = (command: string, ms: number) => sshRun(booted.ports.ssh!, "admin", key, command, d.cap(ms));
      // Minutes after power-on the download of npm (one tarball) is long done; Node-RED's install may still run.
      const journal = async () => (await ssh(sudo("journalctl -b -u pibake-firstboot -o cat --no-pager"), STEP.ssh)).stdout;
      let text = await journal();
      const wait = d.before("npm installed", 2 * STEP.ssh);
      while (!text.includes(`npm ${NPM_RELEASE.version} installed in /usr/local`) && wait.remaining() > 0) {
        await new Promise((res) => setTimeout(res, Math.min(15_000, wait.remaining())));
        text = await journal();
      }
      expect(text, text).toContain(`npm ${NPM_RELEASE.version} installed in /usr/local`);
      expect(text).toContain(`installing Node-RED`);
      expect(text).not.toMatch(/failed|giving up|not the pinned ones/);
      const npm = await ssh(
        "readlink -f /usr/local/bin/npm; /usr/local/bin/npm --version; if dpkg-query -W -f '\${db:Status-Abbrev}' npm 2>/dev/null | grep -q '^ii'; then echo \"Debian's npm\"; else echo none; fi; systemctl show -p ActiveState -p NRestarts pibake-firstboot; test -e /var/lib/pibake/firstboot.done && echo done || echo running",
        STEP.ssh,
      );
      const [link, version, debianNpm, ...rest] = npm.stdout.split("\n");
      expect([link, version, debianNpm]).toEqual(["/usr/local/lib/node_modules/npm/bin/npm-cli.js", NPM_RELEASE.version, "none"]);
      expect(rest).toContain("NRestarts=0");
      const done = rest.includes("done");
      expect(rest).toContain(done ? "ActiveState=inactive" : "ActiveState=active");
      // The broker kept serving while npm ran: a round trip now.
      const client = await tryConnect(
        `mqtts://127.0.0.1:${booted.ports.mqtts}`,
        { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW },
        d.cap(STEP.connect),
      );
      expect(client.ok, client.error).toBe(true);
      try {
        expect(await roundTrip(client.client!, "home/commands/first-boot", "npm", d.cap(STEP.roundTrip))).toBe("npm");
      } finally {
        client.client!.end(true);
      }
      console.log(
        `boot: ${((Date.now() - booted.startedAt) / 1000).toFixed(0)} s after power-on, the first boot's install is ${done ? "done" : "still running"}`,
      );
    },
    BUDGET.nodeRedFirstBoot + MARGIN,
  );

  it.runIf(SLOW)(
    "finishes its first boot's install (npm run test:boot with PIBAKE_SLOW_TESTS=1): the editor asks for a login and takes the generated password, the dashboard is served",
    async () => {
      const d = new Deadline("Node-RED editor", BUDGET.nodeRedEditor);
      const booted = vm!;
      const base = `http://127.0.0.1:${booted.ports.nodeRed}`;
      const wait = d.before("Node-RED wait", 8 * STEP.http + STEP.ssh);
      await withBootDiagnostics(booted, { port: booted.ports.ssh!, user: "admin", key }, async () => {
        for (;;) {
          const r =
            wait.remaining() > 0 ? await fetch(`${base}/auth/login`, { signal: AbortSignal.timeout(wait.cap(STEP.http)) }).catch(() => undefined) : undefined;
          if (r?.ok) break;
          if (booted.exited() || wait.remaining() <= 0) {
            const journal = await sshRun(
              booted.ports.ssh!,
              "admin",
              key,
              sudo("journalctl -b -u pibake-firstboot -o cat --no-pager | tail -n 40"),
              DIAGNOSTICS_SSH_MS,
            ).catch((e: Error) => ({ stdout: e.message }));
            throw new Error(
              `Node-RED did not answer within ${Math.round(BUDGET.nodeRedEditor / 60000)} minutes of this step; pibake-firstboot's journal:\n${journal.stdout}`,
            );
          }
          await new Promise((res) => setTimeout(res, Math.min(10_000, wait.remaining())));
        }
      });
      console.log(`boot: power-on to Node-RED answering after its first-boot install: ${((Date.now() - booted.startedAt) / 1000).toFixed(1)} s`);
      const http = (url: string, init: RequestInit = {}) => fetch(url, { ...init, signal: AbortSignal.timeout(d.cap(STEP.http)) });
      const login = (await (await http(`${base}/auth/login`)).json()) as { type?: string };
      expect(login.type).toBe("credentials");
      expect((await http(`${base}/flows`)).status).toBe(401);
      const token = (password: string) =>
        http(`${base}/auth/token`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ client_id: "node-red-admin", grant_type: "password", scope: "*", username: "admin", password }),
        });
      expect((await token("wrong-password-1")).status).toBe(403);
      const ok = await token(readFileSync(path.join(tmp.dir, "state", STATE_FILES.adminPassword), "utf8").trim());
      expect(ok.status).toBe(200);
      // The dashboard (examples/broker.json: FlowFuse's) is served.
      expect((await http(`${base}/dashboard`)).status).toBe(200);
      const marker = await sshRun(booted.ports.ssh!, "admin", key, "cat /var/lib/pibake/firstboot.done; systemctl is-enabled nodered", d.cap(STEP.ssh));
      expect(marker.stdout).toMatch(/^\d{4}-\d\d-\d\dT\S+\nenabled$/);
    },
    BUDGET.nodeRedEditor + MARGIN,
  );

  it(
    "passes pibake check from this host as from the home network, through the forwarded ports",
    async () => {
      const d = new Deadline("pibake check", BUDGET.check);
      const ports = vm!.ports;
      const r = await pibake(
        [
          "check",
          path.join(tmp.dir, "boot.json"),
          "127.0.0.1",
          "--lan",
          "--state",
          path.join(tmp.dir, "state"),
          "--port-tls",
          String(ports.mqtts),
          "--port-lan",
          String(ports.mqtt),
          "--port-ws",
          String(ports.wss),
          "--port-node-red",
          String(ports.nodeRed),
          "--timeout",
          "10",
          "--json",
        ].concat(["--ssh", "--ssh-key", key, "--port-ssh", String(ports.ssh)]),
        { env: { ...secretEnv, T_NODE_RED_PW: NODE_RED_PASSWORD, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" }, timeout: d.cap(STEP.check) },
      );
      const report = JSON.parse(String(r.stdout)) as { ok: boolean; checks: { name: string; status: string; detail: string }[] };
      console.log(`check --ssh on the booted Pi:\n${report.checks.map((c) => `  ${c.status}: ${c.name}: ${c.detail}`).join("\n")}`);
      // The Pi's own facts, over SSH: QEMU's Pi has no Internet, so ddclient cannot have updated the name yet.
      const fact = (name: string) => report.checks.find((c) => c.name === name);
      expect(fact("ddclient"), String(r.stdout)).toMatchObject({
        status: "warning",
        detail: expect.stringMatching(/^running, but it has not updated home\.freemyip\.com yet/),
      });
      expect(fact("failed units")).toMatchObject({ status: "ok", detail: "none" });
      expect(fact("mosquitto uptime")?.detail).toMatch(/^active for \d+ (s|min) \(the Pi up /);
      expect(fact("pibake-status")?.detail).toMatch(/^written .*: mqtt-broker \(trixie, arm64\)/);
      expect(fact("pi config")?.detail).toBe("the Pi runs this config (built with it, never pushed)");
      // Node-RED's first-boot install, from the Pi itself: done, or under way and said so (then the silent editor is a warning too).
      expect(fact(NODE_RED_INSTALL)?.detail, String(r.stdout)).toMatch(
        /^installed by the first boot \(done |^the first boot is installing npm, Node-RED and the dashboard \(running for /,
      );
      for (const name of ["ssh key login", "ssh passwords", "disk /", "disk /boot/firmware", "memory"]) expect(fact(name)?.status, name).toBe("ok");
      expect(unexpectedChecks(report), String(r.stdout)).toEqual([]);
      expect(report.ok).toBe(true);
      expect(r.exitCode).toBe(0);
    },
    BUDGET.check + MARGIN,
  );

  // pibake push, on the same Pi: a new domain and password without a reflash, then a push whose broker cannot start, rolled back.
  const state = () => path.join(tmp.dir, "state");
  const pushEnv = { ...secretEnv, T_NODE_RED_PW: NODE_RED_PASSWORD, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" };
  /** The config the image was built from (buildForQemu's), changed. */
  const pushConfig = (mutate: (c: Record<string, any>) => void) => {
    const c = JSON.parse(readFileSync(path.join(tmp.dir, "boot.json"), "utf8")) as Record<string, any>;
    mutate(c);
    return c;
  };
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

  /** The retained message, read by phone (home/#) over TLS for `servername`. */
  const retained = async (servername: string, ms: number): Promise<string | undefined> => {
    const phone = await tryConnect(
      `mqtts://127.0.0.1:${vm!.ports.mqtts}`,
      { ca, servername, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW },
      ms,
    );
    expect(phone.ok, phone.error).toBe(true);
    try {
      return await new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), ms);
        phone.client!.on("message", (t, p) => {
          if (t === "home/sensors/kitchen") clearTimeout(timer), resolve(p.toString());
        });
        void phone.client!.subscribeAsync("home/sensors/kitchen", { qos: 1 });
      });
    } finally {
      phone.client!.end(true);
    }
  };

  it(
    "has, from its build, the very files a push of the same config renders: a dry-run push of it has nothing to push",
    async () => {
      const d = new Deadline("build = push", BUDGET.samePush);
      const record = await sshRun(vm!.ports.ssh!, "admin", key, "cat /var/lib/pibake/build.json", d.cap(STEP.ssh));
      const built = (JSON.parse(record.stdout) as { overlay: string[] }).overlay;
      expect(built.length).toBeGreaterThan(20);
      // Compared by sha256, mode and owner on the booted Pi (first boot included), file by file.
      const push = await pibake(
        ["push", path.join(tmp.dir, "boot.json"), "127.0.0.1", "--dry-run", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state()],
        { env: pushEnv, timeout: d.cap(STEP.push) },
      );
      const said = `${push.stdout}\n${push.stderr}`;
      expect(push.exitCode, said).toBe(0);
      expect(said).toContain(`nothing to push: the ${built.length} files on 127.0.0.1 are those the config renders`);
    },
    BUDGET.samePush + MARGIN,
  );

  it(
    "pushes a new domain and a changed MQTT password: the new certificate is served, the old password refused, the retained message kept",
    async () => {
      const d = new Deadline("push", BUDGET.push);
      // A retained message published before the push, which must survive it.
      const sensors = await tryConnect(
        `mqtts://127.0.0.1:${vm!.ports.mqtts}`,
        { ca, servername: DOMAIN, rejectUnauthorized: true, username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW },
        d.cap(STEP.connect),
      );
      expect(sensors.ok, sensors.error).toBe(true);
      try {
        await sensors.client!.publishAsync("home/sensors/kitchen", "21.5", { qos: 1, retain: true });
      } finally {
        sensors.client!.end(true);
      }
      const cfg = writeJson(
        path.join(tmp.dir, "push.json"),
        pushConfig((c) => {
          c.tls.domain = NEW_DOMAIN;
          c.mqtt.users[0].password = { env: "T_MQTT_SENSORS_PW_NEW" };
        }),
      );
      const started = Date.now();
      const push = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state()], {
        env: { ...pushEnv, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW },
        timeout: d.cap(STEP.push),
      });
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
      expect(readFileSync(path.join(state(), "known_hosts"), "utf8")).toMatch(/ssh-ed25519 /);

      const now = await served(NEW_DOMAIN, d.cap(STEP.connect));
      expect(now.authorized, now.error).toBe(true);
      expect(now.cert.subjectAltName).toContain(`DNS:${NEW_DOMAIN}`);
      expect(now.cert.subjectAltName).not.toContain(`DNS:${DOMAIN}`);
      const url = `mqtts://127.0.0.1:${vm!.ports.mqtts}`;
      const old = await tryConnect(
        url,
        { ca, servername: NEW_DOMAIN, rejectUnauthorized: true, username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW },
        d.cap(STEP.connect),
      );
      expect(old.ok).toBe(false);
      expect(old.error).toMatch(/Not authorized|Bad username/i);
      const fresh = await tryConnect(
        url,
        { ca, servername: NEW_DOMAIN, rejectUnauthorized: true, username: "sensors", password: NEW_SENSORS_PW },
        d.cap(STEP.connect),
      );
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
      const again = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state()], {
        env: { ...pushEnv, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW },
        timeout: d.cap(STEP.push),
      });
      expect(again.exitCode, again.stderr).toBe(0);
      expect(again.stdout).toMatch(/nothing to push/);
    },
    BUDGET.push + MARGIN,
  );

  /** pibake check of `config` against the Pi, through the forwarded ports, as from the home network. */
  const checkPi = (config: string, env: Record<string, string>, ms: number) =>
    pibake(
      [
        "check",
        config,
        "127.0.0.1",
        "--lan",
        "--state",
        state(),
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
        key,
        "--port-ssh",
        String(vm!.ports.ssh),
      ],
      { env, timeout: ms },
    );
  type Report = { ok: boolean; checks: { name: string; status: string; detail: string }[] };

  it(
    "passes pibake check with the pushed config, and fails it with the config from before the push: the old name is not in the certificate, the old password refused",
    async () => {
      const d = new Deadline("check after push", BUDGET.checkAfterPush);
      const pushed = await checkPi(path.join(tmp.dir, "push.json"), { ...pushEnv, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW }, d.cap(STEP.check));
      const report = JSON.parse(String(pushed.stdout)) as Report;
      // ddclient has had no Internet to update the name with (see the first check).
      expect(unexpectedChecks(report), String(pushed.stdout)).toEqual([]);
      expect(pushed.exitCode).toBe(0);
      const detail = (name: string) => report.checks.find((c) => c.name === name)?.detail ?? "";
      expect(detail("tls name")).toContain(NEW_DOMAIN);
      // The certificate the push placed is the one the state directory issued for the new name.
      const issued = new X509Certificate(readFileSync(path.join(state(), "server.crt")));
      expect(issued.subjectAltName).toContain(`DNS:${NEW_DOMAIN}`);
      expect(detail("certificate origin")).toContain(issued.fingerprint256.slice(0, 23));
      // Over SSH, the push's record on the Pi says it runs this config.
      expect(detail("pi config")).toMatch(/^the Pi runs this config \(pushed \d{4}-/);

      // The config from before the push, with the round trip sent by sensors (phone's readwrite rule left out): its old password.
      const before = writeJson(
        path.join(tmp.dir, "before-push.json"),
        pushConfig((c) => {
          c.mqtt.users[1].topics = c.mqtt.users[1].topics.filter((t: { access: string }) => t.access !== "readwrite");
        }),
      );
      const stale = await checkPi(before, pushEnv, d.cap(STEP.check));
      const staleReport = JSON.parse(String(stale.stdout)) as Report;
      expect(stale.exitCode, String(stale.stdout)).toBe(1);
      expect(staleReport.ok).toBe(false);
      const failedCheck = (name: string) => staleReport.checks.find((c) => c.name === name && c.status === "failed")?.detail;
      expect(failedCheck("tls name"), String(stale.stdout)).toMatch(/does not carry home\.freemyip\.com:/);
      // Over TLS no client that verifies the old name gets as far as a login; on the LAN port the old password is refused.
      expect(failedCheck("lan round trip"), String(stale.stdout)).toMatch(/^sensors could not log in with the config's password/);
      expect(staleReport.checks.find((c) => c.name === "pi config")).toMatchObject({
        status: "warning",
        fix: expect.stringMatching(/pibake push \S*before-push\.json 127\.0\.0\.1$/),
      });
    },
    BUDGET.checkAfterPush + MARGIN,
  );

  it(
    "rolls back a push whose broker cannot start (its new LAN port is taken on the Pi): the command fails saying so, the previous files serve again",
    async () => {
      const d = new Deadline("roll-back", BUDGET.rollback);
      // Something else holds the port the next config gives mosquitto's LAN listener: a second broker, made by hand on the Pi.
      const squat = await sshRun(
        vm!.ports.ssh!,
        "admin",
        key,
        sudo(`systemd-run --unit=pibake-test-squatter mosquitto -p ${SQUATTED_PORT} && sleep 2 && ss -Hltn 'sport = :${SQUATTED_PORT}'`),
        d.cap(STEP.ssh),
      );
      expect(squat.stdout, squat.stderr).toMatch(new RegExp(`:${SQUATTED_PORT}\\b`));
      const cfg = writeJson(
        path.join(tmp.dir, "push.json"),
        pushConfig((c) => {
          c.tls.domain = THIRD_DOMAIN;
          c.mqtt.lanPort = SQUATTED_PORT;
          c.mqtt.users[0].password = { env: "T_MQTT_SENSORS_PW_NEW" };
        }),
      );
      const push = await pibake(["push", cfg, "127.0.0.1", "--yes", "--port", String(vm!.ports.ssh), "--ssh-key", key, "--state", state()], {
        env: { ...pushEnv, T_MQTT_SENSORS_PW_NEW: NEW_SENSORS_PW },
        timeout: d.cap(STEP.push),
      });
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
    },
    BUDGET.rollback + MARGIN,
  );
  it(
    "powers off cleanly within a minute",
    async () => {
      const d = new Deadline("power-off", BUDGET.powerdown);
      const ms = await vm!.powerdown(d.cap(STEP.powerdown));
      console.log(`boot: clean power-off took ${(ms / 1000).toFixed(1)} s`);
      // The first boot's npm install may still run (CI does not wait for it): it is stopped within its 20 s too.
      expect(ms).toBeLessThan(60_000);
      expect(vm!.console()).toMatch(/reboot: Power down|System halted|Power down/);
    },
    BUDGET.powerdown + MARGIN,
  );
});

/** A command run as root through sudo, which asks for the first user's password (Raspberry Pi OS from 2026-04-13 has no passwordless sudo). */
function sudo(command: string): string {
  return `printf '%s\\n' ${shellQuote(secretEnv.T_USER_PW)} | sudo -S -p '' sh -c ${shellQuote(command)}`;
}

/** `pibake build --base` from the test base image, with the Pi's address in QEMU's user network; within `d`. */
/** An image of brokerImageConfig (changed by `mutate`) built from the stand-in for Raspberry Pi OS Lite. */
async function buildForQemu(dir: string, sshKey: string, d: Deadline, mutate: (c: Record<string, any>) => void): Promise<{ image: string; ca: Buffer }> {
  const c = brokerImageConfig(sshKey);
  mutate(c);
  const cfg = writeJson(path.join(dir, "boot.json"), c);
  const base = (await execa("bash", [path.join(repoRoot, "scripts/fixtures/base-image.sh"), "trixie"], { timeout: d.cap(STEP.fixture) })).stdout.trim();
  const out = path.join(dir, "deploy");
  const build = await pibake(["build", cfg, "--base", base, "--out", out, "--state", path.join(dir, "state"), "--compress", "none"], {
    env: { ...secretEnv, T_NODE_RED_PW: NODE_RED_PASSWORD, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" },
    timeout: d.cap(STEP.build),
  });
  expect(build.exitCode, build.stderr).toBe(0);
  return { image: path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!), ca: readFileSync(path.join(out, "ca.crt")) };
}

async function kernelDir(d: Deadline): Promise<string> {
  return (await execa("bash", [path.join(repoRoot, "scripts/fixtures/qemu-kernel.sh")], { timeout: d.cap(STEP.fixture) })).stdout.trim();
}

/**
 * Node-RED installed at build time (nodeRed.install "build"): the editor on the
 * forwarded port asks for a login and the token endpoint takes the configured
 * password. npm installs Node-RED under qemu-user during the build, which takes
 * many minutes, so this runs only with PIBAKE_BOOT_NODE_RED=1 (see docs/development.md).
 */
describe.skipIf(!isRoot || !hasQemu || process.env.PIBAKE_BOOT_NODE_RED !== "1")("Node-RED in the booted image", () => {
  const tmp = tempDir("pibake-boot-nr-");
  const key = () => path.join(tmp.dir, "key");
  let vm: Vm | undefined;
  let image = "";
  let kernel = "";

  beforeAll(async () => {
    const d = new Deadline("build", BUDGET.build);
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key()], { timeout: d.cap(STEP.keygen) });
    ({ image } = await buildForQemu(tmp.dir, readFileSync(`${key()}.pub`, "utf8").trim(), d, (c) => {
      c.nodeRed = { install: "build", admin: { user: "admin", password: { env: "T_NODE_RED_PW" } } };
    }));
    kernel = await kernelDir(d);
  }, BUDGET.build + MARGIN);

  afterAll(async () => {
    await vm?.kill();
    tmp.cleanup();
  });

  it(
    "serves the editor behind a login, and the token endpoint accepts the configured password",
    async () => {
      const d = new Deadline("Node-RED", BUDGET.nodeRed);
      vm = await bootVm({ image, kernelDir: kernel, consoleLog: path.join(tmp.dir, "console.log"), forward: { nodeRed: 1880, ssh: 22 } });
      const booted = vm;
      const base = `http://127.0.0.1:${vm.ports.nodeRed}`;
      const wait = d.before("Node-RED wait", 6 * STEP.http);
      await withBootDiagnostics(booted, { port: booted.ports.ssh!, user: "admin", key: key() }, async () => {
        for (;;) {
          const r =
            wait.remaining() > 0 ? await fetch(`${base}/auth/login`, { signal: AbortSignal.timeout(wait.cap(STEP.http)) }).catch(() => undefined) : undefined;
          if (r?.ok) break;
          if (booted.exited() || wait.remaining() <= 0) throw new Error(`Node-RED did not answer within 10 minutes`);
          await new Promise((res) => setTimeout(res, Math.min(5000, wait.remaining())));
        }
      });
      const http = (url: string, init: RequestInit = {}) => fetch(url, { ...init, signal: AbortSignal.timeout(d.cap(STEP.http)) });
      console.log(`boot: power-on to Node-RED answering: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      // The editor asks for a login: adminAuth of type "credentials".
      const login = (await (await http(`${base}/auth/login`)).json()) as { type?: string };
      expect(login.type).toBe("credentials");
      expect((await http(`${base}/flows`)).status).toBe(401);
      const token = async (password: string) =>
        http(`${base}/auth/token`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ client_id: "node-red-admin", grant_type: "password", scope: "*", username: "admin", password }),
        });
      expect((await token("wrong-password-1")).status).toBe(403);
      const ok = await token(NODE_RED_PASSWORD);
      expect(ok.status).toBe(200);
      const { access_token } = (await ok.json()) as { access_token: string };
      expect((await http(`${base}/flows`, { headers: { authorization: `Bearer ${access_token}` } })).status).toBe(200);
    },
    BUDGET.nodeRed + MARGIN,
  );
});

/**
 * What this machine's network needs of a first boot, and a Pi at home does not: the registry is
 * reached through a TLS-inspecting proxy whose CA the host trusts through NODE_EXTRA_CA_CERTS (given
 * to pibake-firstboot.service the same way, as a Pi behind such a proxy would need it), and there is no
 * NTP server to wait for (QEMU's clock is the host's). A drop-in of the test's, outside what pibake writes.
 */
async function fitFirstBootToThisNetwork(image: string, mountpoint: string): Promise<void> {
  const extraCa = process.env.NODE_EXTRA_CA_CERTS;
  const mounted = await mountRoot(image, mountpoint, { readWrite: true });
  try {
    const dropIn = path.join(mountpoint, "etc/systemd/system/pibake-firstboot.service.d");
    mkdirSync(dropIn, { recursive: true });
    const lines = ["[Service]", "Environment=PIBAKE_CLOCK_WAIT=0"];
    if (extraCa && existsSync(extraCa)) {
      writeFileSync(path.join(mountpoint, "etc/pibake-test-extra-ca.pem"), readFileSync(extraCa));
      lines.push("Environment=NODE_EXTRA_CA_CERTS=/etc/pibake-test-extra-ca.pem");
    }
    writeFileSync(path.join(dropIn, "50-pibake-test-network.conf"), `# Written by pibake's boot test for its own network.\n${lines.join("\n")}\n`);
  } finally {
    await mounted.release();
  }
}
