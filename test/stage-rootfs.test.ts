import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa, type ResultPromise } from "execa";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { FIXTURE_TIMEOUT_MS, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { freePort, waitForPort } from "./helpers/net.js";
import { roundTrip, tryConnect } from "./helpers/mqtt.js";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render } from "../src/render/index.js";
import { writeRendered } from "../src/render/write.js";
import { packageList } from "../src/render/stage.js";
import { runStage } from "../src/engines/stage-runner.js";
import { unmountTree } from "../src/host/mounts.js";

/**
 * The rendered stage applied to a real Debian arm64 root filesystem the way
 * pi-gen applies it (packages in the chroot, NN-run.sh with ROOTFS_DIR,
 * NN-run-chroot.sh inside), then the arm64 mosquitto in that rootfs, run
 * through qemu-user, serves TLS to a client on this host.
 *
 * The fixture is a debootstrap minbase with systemd (what pi-gen's stage2
 * leaves) and the stage's packages already installed, so the stage's package
 * step runs for real but finds nothing to download: installing them under
 * qemu-user takes minutes, and the fixture is cached outside the repo.
 */
const isRoot = process.getuid?.() === 0;
/** Writes journal files from journal export format (Debian's systemd-journal-remote). */
const JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote";
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");

describe.skipIf(!isRoot || !hasBinfmt)("stage applied to a Debian arm64 rootfs", () => {
  const tmp = tempDir("pibake-rootfs-");
  const rootfs = path.join(tmp.dir, "rootfs");
  const out = path.join(tmp.dir, "render");
  let lanPort = 0;
  let tlsPort = 0;
  let broker: ResultPromise | undefined;
  let brokerLog = "";

  beforeAll(async () => {
    lanPort = await freePort();
    tlsPort = await freePort();
    const c = validConfig();
    c.mqtt.lanPort = lanPort;
    c.mqtt.tlsPort = tlsPort;
    // Node-RED's stage (nodejs under qemu-user) has tests of its own.
    c.nodeRed = { enabled: false };
    c.network.wifi = { ssid: "HomeNet", passphrase: { env: "T_WIFI_PW" }, country: "DE" };
    const cfg = writeJson(path.join(tmp.dir, "broker.json"), c);
    const { model } = loadConfig(cfg, { ...secretEnv, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" });
    const secrets = await prepareSecrets(model, new StateDir(path.join(tmp.dir, "state")));
    writeRendered(out, await render(model, secrets));

    const packages = packageList(readFileSync(path.join(out, "stage/00-broker/00-packages-nr"), "utf8"));
    const fixture = await execa("bash", [path.join(repoRoot, "scripts/fixtures/arm64-rootfs.sh"), "trixie", "systemd", ...packages], {
      timeout: FIXTURE_TIMEOUT_MS,
    });
    mkdirSync(rootfs);
    await execa("tar", ["--numeric-owner", "-xpf", fixture.stdout.trim(), "-C", rootfs]);
    // What pi-gen's stage1 does before any later stage runs: the first user exists,
    // as trixie images from 2026-04-13 on make it (no password: /usr/sbin/nologin).
    await execa("chroot", [rootfs, "useradd", "--create-home", "--shell", "/usr/sbin/nologin", "admin"]);
    officialImageState(rootfs);
    // apt's timers off, as a base image may have them: the stage must turn them on for unattended-upgrades.
    for (const timer of ["apt-daily.timer", "apt-daily-upgrade.timer"])
      rmSync(path.join(rootfs, "etc/systemd/system/timers.target.wants", timer), { force: true });
    // A probe run last, inside the chroot, records what a stage sees there.
    mkdirSync(path.join(out, "stage/99-probe"));
    writeFileSync(
      path.join(out, "stage/99-probe/00-run-chroot.sh"),
      "#!/bin/bash -e\n{ ls /etc/ld.so.preload 2>&1 || true; grep -h -e '^MODULES=' -e '^update_initramfs=' /etc/initramfs-tools/*.conf; } >/root/stage-probe.txt\n",
      { mode: 0o755 },
    );

    await runStage({ stageDir: path.join(out, "stage"), rootfs, aptUpdate: false });
  }, FIXTURE_TIMEOUT_MS + 300_000);

  afterAll(async () => {
    broker?.kill("SIGKILL");
    await broker?.catch(() => undefined);
    await unmountTree(rootfs);
    tmp.cleanup();
  });

  const idOf = (file: string, name: string) => {
    const line = readFileSync(path.join(rootfs, file), "utf8")
      .split("\n")
      .find((l) => l.startsWith(`${name}:`));
    if (!line) throw new Error(`${name} not in ${file}`);
    return Number(line.split(":")[2]);
  };

  it("leaves every overlay file with its owner (by the image's ids) and mode", () => {
    const mosquittoUid = idOf("etc/passwd", "mosquitto");
    const mosquittoGid = idOf("etc/group", "mosquitto");
    const expected: [string, number, number, number][] = [
      ["etc/mosquitto/mosquitto.conf", 0o644, 0, 0],
      ["etc/mosquitto/conf.d/pibake.conf", 0o644, 0, 0],
      ["etc/systemd/system/mosquitto.service.d/50-pibake.conf", 0o644, 0, 0],
      ["usr/local/lib/pibake/mosquitto-db-check.sh", 0o755, 0, 0],
      ["etc/systemd/journald.conf.d/50-pibake.conf", 0o644, 0, 0],
      ["etc/apt/apt.conf.d/52pibake-unattended-upgrades", 0o644, 0, 0],
      ["etc/mosquitto/passwd", 0o600, mosquittoUid, mosquittoGid],
      ["etc/mosquitto/acl", 0o600, mosquittoUid, mosquittoGid],
      ["etc/mosquitto/certs/server.key", 0o600, mosquittoUid, mosquittoGid],
      ["etc/mosquitto/certs/server.crt", 0o644, 0, 0],
      ["etc/mosquitto/certs/ca.crt", 0o644, 0, 0],
      ["etc/ddclient.conf", 0o600, 0, 0],
      ["etc/default/ddclient", 0o644, 0, 0],
      ["etc/NetworkManager/system-connections/pibake-lan.nmconnection", 0o600, 0, 0],
      ["etc/cloud/cloud.cfg.d/99_zz-pibake.cfg", 0o644, 0, 0],
      ["etc/ssh/sshd_config.d/50-pibake.conf", 0o644, 0, 0],
      ["etc/nftables.conf", 0o755, 0, 0],
      ["etc/fail2ban/jail.d/pibake.local", 0o644, 0, 0],
      ["etc/fail2ban/filter.d/pibake-mosquitto.conf", 0o644, 0, 0],
    ];
    for (const [file, mode, uid, gid] of expected) {
      const st = statSync(path.join(rootfs, file));
      expect({ file, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }).toEqual({ file, mode, uid, gid });
    }
    // The overlay must not have changed directories that were already there.
    expect(statSync(path.join(rootfs, "etc")).mode & 0o7777).toBe(0o755);
    expect(mosquittoUid).not.toBe(0);
  });

  it("enables the services and sets the first user's password from its hash", async () => {
    const wants = path.join(rootfs, "etc/systemd/system/multi-user.target.wants");
    for (const unit of ["mosquitto.service", "ddclient.service", "pibake-status.service"]) {
      expect(lstatSync(path.join(wants, unit)).isSymbolicLink(), unit).toBe(true);
      expect(readlinkSync(path.join(wants, unit))).toMatch(new RegExp(`/systemd/system/${unit}$`));
    }
    // unattended-upgrades runs from apt's timers.
    for (const timer of ["apt-daily.timer", "apt-daily-upgrade.timer"]) {
      expect(readlinkSync(path.join(rootfs, "etc/systemd/system/timers.target.wants", timer)), timer).toMatch(new RegExp(`/systemd/system/${timer}$`));
    }
    const shadow = readFileSync(path.join(rootfs, "etc/shadow"), "utf8")
      .split("\n")
      .find((l) => l.startsWith("admin:"))!;
    const hash = shadow.split(":")[1]!;
    expect(hash).toMatch(/^\$6\$/);
    // libc's crypt, on the host, agrees that this hash is of the configured password.
    const check = await execa("python3", [
      "-W",
      "ignore",
      "-c",
      "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])",
      secretEnv.T_USER_PW,
      hash,
    ]);
    expect(check.stdout).toBe("True");
    // The firewall and fail2ban (nftables.service is wanted by sysinit.target, fail2ban by multi-user.target).
    for (const unit of ["nftables.service", "fail2ban.service"]) {
      const r = await execa("systemctl", [`--root=${rootfs}`, "is-enabled", unit], { reject: false });
      expect(`${unit} ${r.stdout.trim()}`).toBe(`${unit} enabled`);
    }
    // The build-time helpers are gone again.
    expect(existsSync(path.join(rootfs, "usr/sbin/policy-rc.d"))).toBe(false);
    expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(rootfs);
  });

  it("leaves a first boot nothing to undo: a login shell, the wizard masked, the Wi-Fi radio on", () => {
    expect(readFileSync(path.join(rootfs, "etc/passwd"), "utf8")).toMatch(/^admin:[^\n]*:\/bin\/bash$/m);
    // Masked, so that systemd's first-boot presets cannot enable it again.
    expect(readlinkSync(path.join(rootfs, "etc/systemd/system/userconfig.service"))).toBe("/dev/null");
    expect(existsSync(path.join(rootfs, "etc/systemd/system/multi-user.target.wants/userconfig.service"))).toBe(false);
    expect(lstatSync(path.join(rootfs, "etc/systemd/system/getty.target.wants/getty@tty1.service")).isSymbolicLink()).toBe(true);
    expect(existsSync(path.join(rootfs, "etc/ssh/sshd_config.d/rename_user.conf"))).toBe(false);
    expect(readFileSync(path.join(rootfs, "var/lib/NetworkManager/NetworkManager.state"), "utf8")).toBe("[main]\nWirelessEnabled=true\n");
    for (const radio of ["platform-3f300000.mmcnr:wlan", "platform-fe300000.mmcnr:wlan", "platform-1001100000.mmc:wlan"]) {
      expect(readFileSync(path.join(rootfs, "var/lib/systemd/rfkill", radio), "utf8")).toBe("0\n");
    }
  });

  it("keeps the units it left disabled so through systemd's first-boot presets (the real systemctl preset-all, enable-only)", async () => {
    const preset = readFileSync(path.join(rootfs, "etc/systemd/system-preset/00-pibake.preset"), "utf8");
    expect(preset).toMatch(/^disable \S+\.(service|socket|timer)$/m);
    for (const unit of ["mosquitto.service", "pibake-status.service", "ddclient.service", "userconfig.service"]) expect(preset).not.toContain(` ${unit}\n`);
    // A unit installed after the build, disabled: the control, which presets do enable.
    writeFileSync(path.join(rootfs, "usr/lib/systemd/system/late-probe.service"), "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n");
    const disabledBefore = preset
      .split("\n")
      .filter((l) => l.startsWith("disable "))
      .map((l) => l.slice(8));
    const r = await execa("systemctl", [`--root=${rootfs}`, "preset-all", "--preset-mode=enable-only"], { reject: false, all: true });
    expect(r.exitCode, r.all).toBe(0);
    const state = async (unit: string) => (await execa("systemctl", [`--root=${rootfs}`, "is-enabled", unit], { reject: false })).stdout.trim();
    expect(await state("late-probe.service")).toBe("enabled");
    for (const unit of disabledBefore.filter((u) => !u.includes("@"))) expect(`${unit} ${await state(unit)}`).toBe(`${unit} disabled`);
    expect(await state("userconfig.service")).toBe("masked");
    expect(await state("mosquitto.service")).toBe("enabled");
  });

  it("runs the stage as pi-gen's build does (no ld.so.preload, no initramfs for the build host) and puts those files back byte for byte", () => {
    expect(readFileSync(path.join(rootfs, "root/stage-probe.txt"), "utf8")).toBe(
      "ls: cannot access '/etc/ld.so.preload': No such file or directory\nMODULES=most\nupdate_initramfs=no\n",
    );
    for (const [file, content] of Object.entries(OFFICIAL_FILES)) expect(readFileSync(path.join(rootfs, file), "utf8"), file).toBe(content);
    expect(readdirSync(path.join(rootfs, "etc")).filter((f) => f.endsWith(".pibake-orig"))).toEqual([]);
  });

  it("replaces Debian's mosquitto.conf (the package's conffile) with pibake's, which logs to the journal", () => {
    const conf = readFileSync(path.join(rootfs, "etc/mosquitto/mosquitto.conf"), "utf8");
    expect(conf).toMatch(/^log_dest stderr$/m);
    expect(conf.split("\n").filter((l) => !l.startsWith("#") && l.includes("/var/log"))).toEqual([]);
    expect(readFileSync(path.join(rootfs, "var/lib/dpkg/info/mosquitto.conffiles"), "utf8")).toMatch(/^\/etc\/mosquitto\/mosquitto\.conf$/m);
    // Debian's unit still makes /var/log/mosquitto (an empty directory); nothing writes into it.
    expect(readFileSync(path.join(rootfs, "usr/lib/systemd/system/mosquitto.service"), "utf8")).toMatch(/^Type=notify$/m);
  });

  it("moves a persistence file that the image's own mosquitto cannot load aside, with the rendered drop-in's command", async () => {
    const dropIn = readFileSync(path.join(rootfs, "etc/systemd/system/mosquitto.service.d/50-pibake.conf"), "utf8");
    // ("-": a failing check does not keep mosquitto from starting.)
    const command = /^ExecStartPre=-(.*)$/m.exec(dropIn)![1]!.split(" ");
    const db = path.join(rootfs, "var/lib/mosquitto/mosquitto.db");
    writeFileSync(db, Buffer.concat([Buffer.from("\u0000\u00b5\u0000mosquitto db", "latin1"), Buffer.alloc(64, 0xff)]), { mode: 0o600 });
    const r = await execa("chroot", [rootfs, ...command], { reject: false, all: true, timeout: 120_000 });
    expect(r.exitCode, r.all).toBe(0);
    expect(r.all).toMatch(/^pibake: mosquitto cannot load its persistence file .*moved it to \/var\/lib\/mosquitto\/mosquitto\.db\.corrupt-\d{8}T\d{6}Z;/m);
    expect(existsSync(db)).toBe(false);
    for (const f of readdirSync(path.dirname(db))) rmSync(path.join(path.dirname(db), f));
    // The host's systemd-analyze reads the image's unit with the drop-in without a complaint about either
    // (it does complain about newer settings in other units of trixie's systemd).
    const verify = await execa("systemd-analyze", [`--root=${rootfs}`, "verify", "mosquitto.service"], { reject: false, all: true, timeout: 60_000 });
    expect(
      verify.all
        .split("\n")
        .map((l) => l.replaceAll(rootfs, ""))
        .filter((l) => /mosquitto|pibake/.test(l)),
    ).toEqual([]);
  }, 180_000);

  it.skipIf(!existsSync(JOURNAL_REMOTE))(
    "has the image's fail2ban read the rendered jails, and find the image's mosquitto's failed logins in a journal",
    async () => {
      // The image's own fail2ban-client (Debian's configuration of this release with pibake's jail on top).
      const dump = await execa("chroot", [rootfs, "fail2ban-client", "-d"], { reject: false, all: true, timeout: 120_000 });
      expect(dump.exitCode, dump.all).toBe(0);
      for (const jail of ["sshd", "pibake-mosquitto"]) {
        expect(dump.stdout).toContain(`['add', '${jail}', 'systemd']`);
        expect(dump.stdout).toContain(`['set', '${jail}', 'addaction', 'nftables-allports']`);
      }
      expect(dump.stdout).toContain("['set', 'pibake-mosquitto', 'addjournalmatch', '_SYSTEMD_UNIT=mosquitto.service']");
      expect(dump.stdout).toMatch(/\['set', 'sshd', 'addjournalmatch', '_SYSTEMD_UNIT=ssh\.service'/);

      // The image's mosquitto logging as the Pi's journal gets it: stderr, no timestamps, connection messages.
      const stock = readFileSync(path.join(rootfs, "etc/mosquitto/mosquitto.conf"), "utf8")
        .replace(/^include_dir .*$/m, "")
        .replace(/^log_dest .*$/m, "")
        .replace(/^pid_file .*$/m, "");
      const fragment = readFileSync(path.join(rootfs, "etc/mosquitto/conf.d/pibake.conf"), "utf8").replace(/^listener (\d+)$/gm, "listener $1 127.0.0.1");
      writeFileSync(
        path.join(rootfs, "etc/mosquitto/pibake-journal.conf"),
        `${stock}\n${fragment}\nlog_dest stderr\nlog_timestamp false\nconnection_messages true\n`,
      );
      let log = "";
      const journalBroker = execa("chroot", [rootfs, "/usr/sbin/mosquitto", "-c", "/etc/mosquitto/pibake-journal.conf"], { reject: false, all: true });
      journalBroker.all?.on("data", (d: Buffer) => (log += d.toString()));
      try {
        let alive = true;
        void journalBroker.then(() => (alive = false));
        await waitForPort(tlsPort, 60_000, () => alive);
        const ca = readFileSync(path.join(out, "ca.crt"));
        const opts = { ca, servername: "home.freemyip.com", rejectUnauthorized: true };
        for (const [from, username, password] of [
          ["127.0.0.2", "phone", "wrong-password"],
          ["127.0.0.3", "nosuchuser", "wrong-password"],
          ["127.0.0.4", "phone", secretEnv.T_MQTT_PHONE_PW],
        ] as const) {
          const r = await tryConnect(`mqtts://127.0.0.1:${tlsPort}`, { ...opts, username, password, localAddress: from } as never);
          expect(r.ok, `${from}: ${r.error}`).toBe(username === "phone" && password !== "wrong-password");
          r.client?.end(true);
        }
        const deadline = Date.now() + 10_000;
        while (!/New client connected from 127\.0\.0\.4/.test(log) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      } finally {
        journalBroker.kill("SIGKILL");
        await journalBroker.catch(() => undefined);
      }
      expect(log).toMatch(/^Client \S+ disconnected, not authorised\.$/m);
      const now = Date.now() * 1000;
      const entries = log
        .split("\n")
        .filter(Boolean)
        .map(
          (message, i) =>
            `__REALTIME_TIMESTAMP=${now + i}\n__MONOTONIC_TIMESTAMP=${i + 1}\n_BOOT_ID=5a2e1a3c7d6b4f0e9c8b7a6f5e4d3c2b\n_HOSTNAME=broker\n_SYSTEMD_UNIT=mosquitto.service\nSYSLOG_IDENTIFIER=mosquitto\n_COMM=mosquitto\n_PID=812\nMESSAGE=${message}\n`,
        );
      await execa(JOURNAL_REMOTE, [`--output=${path.join(rootfs, "tmp/mosquitto.journal")}`, "-"], { input: entries.join("\n"), timeout: 20_000 });
      try {
        const found = await execa(
          "chroot",
          [rootfs, "fail2ban-regex", "-o", "ip", 'systemd-journal[journalfiles="/tmp/mosquitto.journal"]', "pibake-mosquitto"],
          { reject: false, all: true, timeout: 120_000 },
        );
        expect(found.exitCode, found.all).toBe(0);
        expect(found.stdout.split("\n").filter(Boolean), log).toEqual(["127.0.0.2", "127.0.0.3"]);
      } finally {
        rmSync(path.join(rootfs, "tmp/mosquitto.journal"), { force: true });
        rmSync(path.join(rootfs, "etc/mosquitto/pibake-journal.conf"), { force: true });
      }
    },
    400_000,
  );

  it("runs the image's arm64 mosquitto with the rendered configuration and serves TLS to this host", async () => {
    // The main config as the image has it (pibake's), with the rendered fragment in place of
    // include_dir; the only change is that the listeners bind loopback (tests never listen wider).
    const stock = readFileSync(path.join(rootfs, "etc/mosquitto/mosquitto.conf"), "utf8")
      .replace(/^include_dir .*$/m, "")
      .replace(/^log_dest .*$/m, "log_dest stderr")
      .replace(/^pid_file .*$/m, "");
    const fragment = readFileSync(path.join(rootfs, "etc/mosquitto/conf.d/pibake.conf"), "utf8").replace(/^listener (\d+)$/gm, "listener $1 127.0.0.1");
    writeFileSync(path.join(rootfs, "etc/mosquitto/pibake-test.conf"), `${stock}\n${fragment}\nlog_type all\n`);
    const arch = await execa("file", ["-L", path.join(rootfs, "usr/sbin/mosquitto")], { reject: false });
    if (arch.exitCode === 0) expect(arch.stdout).toMatch(/aarch64|ARM aarch64/);

    broker = execa("chroot", [rootfs, "/usr/sbin/mosquitto", "-c", "/etc/mosquitto/pibake-test.conf"], { reject: false, all: true });
    broker.all?.on("data", (d: Buffer) => (brokerLog += d.toString()));
    let alive = true;
    void broker.then(() => (alive = false));
    await waitForPort(tlsPort, 60_000, () => alive);

    const domain = "home.freemyip.com";
    const ca = readFileSync(path.join(out, "ca.crt"));
    const good = await tryConnect(`mqtts://127.0.0.1:${tlsPort}`, {
      ca,
      servername: domain,
      rejectUnauthorized: true,
      username: "phone",
      password: secretEnv.T_MQTT_PHONE_PW,
    });
    expect(good.ok, `${good.error}\n${brokerLog}`).toBe(true);
    expect(await roundTrip(good.client!, "home/commands/light", "on").catch(() => "refused by ACL")).toBe("refused by ACL");
    good.client!.end(true);
    const sensors = await tryConnect(`mqtts://127.0.0.1:${tlsPort}`, { ca, servername: domain, username: "sensors", password: secretEnv.T_MQTT_SENSORS_PW });
    expect(sensors.ok, sensors.error).toBe(true);
    sensors.client!.end(true);

    const bad = await tryConnect(`mqtts://127.0.0.1:${tlsPort}`, { ca, servername: domain, username: "phone", password: "wrong-password" });
    expect(bad.ok).toBe(false);
    expect(bad.error).toMatch(/Not authorized|Bad username or password|5|4/i);
    expect(brokerLog).not.toMatch(/Error: Unable to open|Warning: File .* has world readable permissions/);
  }, 120_000);
});

/** Files as an official image has them (armhf's preload, export-image's initramfs settings): the stage must leave them as they were. */
const OFFICIAL_FILES: Record<string, string> = {
  "etc/ld.so.preload": "/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so\n",
  "etc/initramfs-tools/initramfs.conf": "# initramfs.conf\nMODULES=dep\nBUSYBOX=auto\nCOMPRESS=zstd\n",
  "etc/initramfs-tools/update-initramfs.conf": "# update-initramfs.conf\nupdate_initramfs=yes\nbackup_initramfs=no\n",
};

/** What Raspberry Pi OS's first-boot machinery leaves in an image as downloaded (see scripts/fixtures/base-image.sh). */
function officialImageState(rootfs: string): void {
  for (const [file, content] of Object.entries(OFFICIAL_FILES)) {
    mkdirSync(path.dirname(path.join(rootfs, file)), { recursive: true });
    writeFileSync(path.join(rootfs, file), content);
  }
  // userconf-pi's wizard, enabled by rename-user, with its SSH banner; getty@tty1 disabled.
  writeFileSync(
    path.join(rootfs, "usr/lib/systemd/system/userconfig.service"),
    "[Unit]\nDescription=wizard\n[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
  );
  mkdirSync(path.join(rootfs, "etc/systemd/system/multi-user.target.wants"), { recursive: true });
  symlinkSync("/usr/lib/systemd/system/userconfig.service", path.join(rootfs, "etc/systemd/system/multi-user.target.wants/userconfig.service"));
  rmSync(path.join(rootfs, "etc/systemd/system/getty.target.wants/getty@tty1.service"), { force: true });
  mkdirSync(path.join(rootfs, "etc/ssh/sshd_config.d"), { recursive: true });
  writeFileSync(path.join(rootfs, "etc/ssh/sshd_config.d/rename_user.conf"), "Banner /usr/share/userconf-pi/sshd_banner\n");
  // stage2/02-net-tweaks without a Wi-Fi country.
  mkdirSync(path.join(rootfs, "var/lib/NetworkManager"), { recursive: true });
  writeFileSync(path.join(rootfs, "var/lib/NetworkManager/NetworkManager.state"), "[main]\nWirelessEnabled=false\n");
}
