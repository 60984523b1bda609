import { execa } from "execa";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "../helpers/cli.js";
import { bootFile } from "../helpers/image.js";
import { tryConnect } from "../helpers/mqtt.js";
import { bootVm, cmdlineForQemu, Deadline, sshRun, waitForBroker, withBootDiagnostics, type Vm } from "../helpers/qemu.js";

/**
 * The bookworm stand-in for Raspberry Pi OS Lite (scripts/fixtures/base-image.sh
 * bookworm): its first boot runs `init=/usr/lib/raspberrypi-sys-mods/firstboot`
 * from cmdline.txt, which makes the host keys, takes itself off the command
 * line and reboots. An image built from it with `pibake build --base` boots
 * twice under QEMU (the first time writable and ending at that reboot), then
 * answers as a broker with the configured user, no wizard and its own host
 * keys. Two boots and a bookworm build take too long for CI's suite: this is
 * `npm run test:slow` (PIBAKE_SLOW_TESTS=1).
 */
const isRoot = process.getuid?.() === 0;
const hasQemu = existsSync("/usr/bin/qemu-system-aarch64") && existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const wanted = process.env.PIBAKE_SLOW_TESTS === "1";
const DOMAIN = "home.freemyip.com";
const MARGIN = 40_000;
const BUDGET = { build: 3_600_000, firstBoot: 480_000, boot: 600_000, checks: 240_000 };

describe.skipIf(!wanted || !isRoot || !hasQemu)("bookworm: the first boot's init= script, then the broker", () => {
  const tmp = tempDir("pibake-boot-bookworm-");
  const key = () => path.join(tmp.dir, "id_ed25519");
  let image = "";
  let kernel = "";
  let ca: Buffer;
  let vm: Vm | undefined;

  beforeAll(async () => {
    const d = new Deadline("build", BUDGET.build);
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key()], { timeout: d.cap(30_000) });
    const c = validConfig();
    c.image.release = "bookworm";
    c.network = { interface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] };
    c.user.sshKeys = [readFileSync(`${key()}.pub`, "utf8").trim()];
    c.nodeRed = { enabled: false };
    const cfg = writeJson(path.join(tmp.dir, "bookworm.json"), c);
    const fixture = (script: string) =>
      execa("bash", [path.join(repoRoot, "scripts/fixtures", script), "bookworm"], { timeout: d.cap(1_800_000) }).then((r) => r.stdout.trim());
    const base = await fixture("base-image.sh");
    kernel = await fixture("qemu-kernel.sh");
    const out = path.join(tmp.dir, "deploy");
    const r = await pibake(["build", cfg, "--base", base, "--out", out, "--state", path.join(tmp.dir, "state"), "--compress", "none"], {
      env: secretEnv,
      timeout: d.cap(2_400_000),
    });
    expect(r.exitCode, r.stderr).toBe(0);
    // The boots write to the image: the build's own file is that copy (it is ours to change).
    image = path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!);
    ca = readFileSync(path.join(out, "ca.crt"));
  }, BUDGET.build + MARGIN);

  afterAll(async () => {
    await vm?.kill();
    tmp.cleanup();
  });

  it(
    "runs the first-boot script from cmdline.txt, which takes itself off the command line and reboots",
    async () => {
      const d = new Deadline("first boot", BUDGET.firstBoot);
      const before = bootFile(image, "cmdline.txt")!;
      expect(before).toMatch(/ quiet init=\/usr\/lib\/raspberrypi-sys-mods\/firstboot/);
      const first = await bootVm({
        image,
        kernelDir: kernel,
        consoleLog: path.join(tmp.dir, "console-1.log"),
        forward: {},
        append: cmdlineForQemu(before),
        writable: true,
        noReboot: true,
      });
      const code = await Promise.race([first.exit, new Promise<"timeout">((res) => setTimeout(() => res("timeout"), d.cap(BUDGET.firstBoot)))]);
      if (code === "timeout") {
        await first.kill();
        throw new Error(`the first boot did not reboot within ${BUDGET.firstBoot / 1000} s; last console lines:\n${first.lastConsoleLines()}`);
      }
      const after = bootFile(image, "cmdline.txt")!;
      expect(after).not.toMatch(/init=|quiet/);
      expect(after).toMatch(/ rootwait\n?$/);
    },
    BUDGET.firstBoot + MARGIN,
  );

  it(
    "then boots as the broker: the configured user with a shell and passwordless sudo, no wizard, its own host keys",
    async () => {
      const d = new Deadline("second boot", BUDGET.boot);
      vm = await bootVm({
        image,
        kernelDir: kernel,
        consoleLog: path.join(tmp.dir, "console-2.log"),
        forward: { mqtts: 8883, ssh: 22 },
        append: cmdlineForQemu(bootFile(image, "cmdline.txt")!),
      });
      const booted = vm;
      const url = `mqtts://127.0.0.1:${booted.ports.mqtts}`;
      const opts = { ca, servername: DOMAIN, rejectUnauthorized: true, username: "phone", password: secretEnv.T_MQTT_PHONE_PW };
      const ssh = { port: booted.ports.ssh!, user: "admin", key: key() };
      await withBootDiagnostics(booted, ssh, () => waitForBroker(booted, url, opts, d.before("broker wait", 20_000), { ssh }));
      const client = await tryConnect(url, opts, d.cap(15_000));
      expect(client.ok, client.error).toBe(true);
      client.client!.end(true);
      console.log(`boot (bookworm, second boot): power-on to the broker: ${((Date.now() - booted.startedAt) / 1000).toFixed(1)} s`);

      const c = new Deadline("checks", BUDGET.checks);
      const run = (cmd: string) => sshRun(ssh.port, ssh.user, key(), cmd, c.cap(30_000));
      const shell = await run("echo \"$0\"; getent passwd | awk -F: '$3 >= 1000 && $3 < 65534 {print $1}'; sudo -n true && echo sudo-ok");
      expect(shell.stdout, shell.stderr).toBe("bash\nadmin\nsudo-ok");
      const wizard = await run("systemctl is-enabled userconfig.service; test -e /var/lib/userconf-pi/wizard-ran && echo ran || echo never ran");
      expect(wizard.stdout).toBe("masked\nnever ran");
      const keys = await run("ls /etc/ssh | grep -c '^ssh_host_.*_key$'; systemctl is-enabled regenerate_ssh_host_keys.service || true; cat /etc/machine-id");
      const [count, regen, machineId] = keys.stdout.trim().split("\n");
      expect(Number(count)).toBeGreaterThanOrEqual(3);
      expect(regen).toBe("disabled");
      expect(machineId).toMatch(/^[0-9a-f]{32}$/);
      const failed = await run("systemctl --failed --no-legend --plain");
      expect(failed.stdout.trim()).toBe("");
      await booted.powerdown(c.cap(90_000));
    },
    BUDGET.boot + BUDGET.checks + MARGIN,
  );
});
