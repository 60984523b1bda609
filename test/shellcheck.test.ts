/**
 * The rendered pi-gen stage scripts pass shellcheck, also when every secret
 * and free-text field is full of shell syntax; the scripts do exactly what
 * they say when run (with stubbed system commands); and pi-gen.config, sourced
 * by bash as pi-gen's build.sh does, sets exactly the intended variables.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_STAGE_LIST } from "../src/render/view.js";
import { repoRoot } from "./helpers/cli.js";
import { hostChroot } from "./helpers/host-chroot.js";
import { baseConfig, DEFAULT_SECRET_ENV, removeAllFixtures, renderFixture, tempDir, type Fixture, type TestConfig } from "./helpers/render-fixture.js";

/** Scripts pi-gen runs (or sources) from a stage directory. */
const SCRIPT_RE = /(^|\/)(prerun\.sh|\d\d-run(-chroot)?\.sh|EXPORT_IMAGE)$/;

/** Files that would exist if anything in a render got executed by the shell that should not be. */
const canaryDir = tempDir("pibake-canary-");
const CANARY = path.join(canaryDir, "injected");
const NASTY = `it's "quoted" $HOME $(touch ${CANARY}) \`touch ${CANARY}\` back\\slash ;|&><*?~!#`;

function nastyConfig(): { config: TestConfig; env: Record<string, string> } {
  const config = baseConfig();
  // SSH key comments are free text and land in pi-gen.config.
  config.user.sshKeys = [
    `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F ${NASTY}`,
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl plain@host",
  ];
  config.user.passwordSsh = true;
  config.network.wifi = { ssid: `SSID ${NASTY}`.slice(0, 32), passphrase: { env: "PIBAKE_TEST_WIFI_PASSPHRASE" }, country: "GB" };
  config.image.keyboard = { keymap: "gb", layout: "English (UK) - English (UK, extended, Windows)" };
  config.mqtt.users.push({ name: `o'brien"$x\`y\`\\z`, password: { env: "PIBAKE_TEST_MQTT_NASTY" } });
  // The other branch of the stage's chroot script: no firewall, both units turned off.
  config.firewall = { enabled: false };
  // The public certificate's scripts, with shell syntax in the account's address.
  config.tls.mode = "acme";
  config.tls.acme = { email: "o.brien+$(touch${IFS}x)`id`;|&<>*?~!#@example.org" };
  const env = {
    ...DEFAULT_SECRET_ENV,
    PIBAKE_TEST_USER_PASSWORD: NASTY,
    PIBAKE_TEST_MQTT_SENSORS: NASTY,
    PIBAKE_TEST_MQTT_NASTY: `'"$\`\\ ${NASTY}`,
    // WPA allows printable ASCII up to 63 characters.
    PIBAKE_TEST_WIFI_PASSPHRASE: `p'"$(touch ${CANARY})\`x\`\\`.slice(0, 63),
  };
  return { config, env };
}

interface Renders {
  plain: Fixture;
  nasty: Fixture;
}

async function shellcheck(file: string): Promise<{ code: number | undefined; out: string }> {
  const r = await execa("shellcheck", ["-s", "bash", "-f", "gcc", file], { reject: false, timeout: 30_000 });
  if (r.exitCode === undefined) throw new Error(`shellcheck could not run (${r.shortMessage}); CI installs the Debian package shellcheck`);
  return { code: r.exitCode, out: `${r.stdout}${r.stderr}` };
}

/** The stage written to a directory, as writeRendered lays it out. */
function writeStage(fx: Fixture, dir: string): void {
  for (const f of fx.rendered.stage) {
    const p = path.join(dir, f.path);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, f.content, { mode: f.mode });
    chmodSync(p, f.mode);
  }
}

describe("the rendered stage scripts and pi-gen.config", () => {
  const r = {} as Renders;

  beforeAll(async () => {
    r.plain = await renderFixture();
    const { config, env } = nastyConfig();
    r.nasty = await renderFixture({ config, env });
  });

  afterAll(() => {
    r.plain?.cleanup();
    r.nasty?.cleanup();
    removeAllFixtures();
  });

  for (const which of ["plain", "nasty"] as const) {
    it(`shellcheck passes every script the overlay puts on the Pi (${which} render)`, async () => {
      const fx = r[which];
      // Shell scripts: nftables.conf also starts with "#!" (nft -f), and nft itself checks it (test/firewall.test.ts).
      const scripts = fx.rendered.overlay.filter((f) => f.path.endsWith(".sh") || /^#!\/bin\/(ba)?sh/.test(f.content.subarray(0, 12).toString()));
      expect(scripts.map((f) => f.path)).toEqual(expect.arrayContaining(["usr/local/lib/pibake/status.sh", "usr/local/lib/pibake/mosquitto-db-check.sh"]));
      const dir = tempDir("pibake-overlay-");
      const failures: string[] = [];
      for (const f of scripts) {
        // systemd runs them as programs: executable, with a shebang.
        expect(f.mode & 0o111, `${f.path} is executable`).toBe(0o111);
        expect(f.content.toString("utf8"), f.path).toMatch(/^#!\/bin\/(ba)?sh( -e)?\n/);
        const file = path.join(dir, path.basename(f.path));
        writeFileSync(file, f.content);
        const res = await shellcheck(file);
        if (res.code !== 0) failures.push(`${f.path}:\n${res.out}`);
      }
      expect(failures).toEqual([]);
    });

    it(`shellcheck passes every stage script (${which} render)`, async () => {
      const fx = r[which];
      const scripts = fx.rendered.stage.filter((s) => SCRIPT_RE.test(s.path));
      expect(scripts.map((s) => s.path)).toEqual(expect.arrayContaining(["prerun.sh", "00-broker/01-run.sh", "00-broker/02-run-chroot.sh", "EXPORT_IMAGE"]));
      const dir = tempDir("pibake-stage-");
      writeStage(fx, dir);
      const failures: string[] = [];
      for (const s of scripts) {
        // pi-gen runs NN-run*.sh and prerun.sh as programs: executable, with a bash shebang.
        if (s.path.endsWith(".sh")) {
          expect(s.mode & 0o111, `${s.path} is executable`).toBe(0o111);
          expect(s.content.toString("utf8")).toMatch(/^#!\/bin\/bash( -e)?\n/);
        }
        const res = await shellcheck(path.join(dir, s.path));
        if (res.code !== 0) failures.push(`${s.path}:\n${res.out}`);
      }
      // pi-gen.config is sourced by bash, so it is checked as bash too.
      const config = path.join(dir, "pi-gen.config");
      writeFileSync(config, fx.rendered.piGenConfig);
      const res = await shellcheck(config);
      if (res.code !== 0) failures.push(`pi-gen.config:\n${res.out}`);
      expect(failures).toEqual([]);
    });
  }

  it("the shellcheck run is not blind: an unquoted expansion is reported", async () => {
    const dir = tempDir("pibake-shellcheck-");
    const bad = path.join(dir, "01-run.sh");
    writeFileSync(bad, "#!/bin/bash -e\ntar --extract --file files/overlay.tar --directory ${ROOTFS_DIR}\n");
    const res = await shellcheck(bad);
    expect(res.code).not.toBe(0);
    expect(res.out).toMatch(/SC2086/);
  });

  it("sourcing pi-gen.config with set -u in a clean environment sets exactly the intended values", async () => {
    for (const fx of [r.plain, r.nasty]) {
      const dir = tempDir("pibake-config-");
      const file = path.join(dir, "pi-gen.config");
      writeFileSync(file, fx.rendered.piGenConfig);
      // Variables before and after sourcing; then every new one as NUL-separated name and value.
      const script = [
        "set -euo pipefail",
        'before="$(compgen -v | sort)"',
        'source "$1"',
        'after="$(compgen -v | sort)"',
        'for v in $(comm -13 <(printf "%s\\n" "$before") <(printf "%s\\n" "$after")); do',
        '  case "$v" in before|after|BASH_*|_) continue;; esac',
        '  printf "%s\\0%s\\0" "$v" "${!v}"',
        "done",
      ].join("\n");
      // --norc: bash reads ~/.bashrc for -c when its stdin looks like a network connection.
      const res = await execa("env", ["-i", `PATH=${process.env.PATH ?? "/usr/bin:/bin"}`, "bash", "--norc", "--noprofile", "-c", script, "bash", file], {
        stdin: "ignore",
        reject: false,
        timeout: 10_000,
        extendEnv: false,
        stripFinalNewline: false,
      });
      expect(res.exitCode, res.stderr).toBe(0);
      expect(res.stderr).toBe("");
      const parts = res.stdout.split("\0");
      parts.pop();
      const got: Record<string, string> = {};
      for (let i = 0; i < parts.length; i += 2) got[parts[i]!] = parts[i + 1]!;

      const m = fx.model;
      const placeholder = readFileSync(fx.state.file("pi-gen-first-user-placeholder"), "utf8").trim();
      const expected: Record<string, string> = {
        IMG_NAME: m.image.name,
        RELEASE: m.image.release,
        TARGET_HOSTNAME: m.image.hostname,
        FIRST_USER_NAME: m.user.name,
        FIRST_USER_PASS: placeholder,
        DISABLE_FIRST_BOOT_USER_RENAME: "1",
        ENABLE_SSH: "1",
        PUBKEY_SSH_FIRST_USER: m.user.sshKeys.join("\n"),
        PUBKEY_ONLY_SSH: m.user.passwordSsh ? "0" : "1",
        LOCALE_DEFAULT: m.image.locale,
        KEYBOARD_KEYMAP: m.image.keyboard.keymap,
        KEYBOARD_LAYOUT: m.image.keyboard.layout,
        TIMEZONE_DEFAULT: m.image.timezone,
        ...(m.network.wifi ? { WPA_COUNTRY: m.network.wifi.country } : {}),
        DEPLOY_COMPRESSION: "none",
        STAGE_LIST: DEFAULT_STAGE_LIST,
      };
      expect(got).toEqual(expected);
      // The real password never reaches pi-gen; the placeholder is not it.
      expect(placeholder).toMatch(/^[A-Za-z0-9_-]{16,}$/);
      expect(fx.rendered.piGenConfig).not.toContain(fx.clear.userPassword);
    }
    expect(r.nasty.model.user.sshKeys[0]).toContain("$(touch");
    expect(r.nasty.model.image.keyboard.layout).toContain("(UK, extended, Windows)");
    expect(existsSync(CANARY)).toBe(false);
  });

  it("02-run-chroot.sh passes the hash, user and owners to the commands unchanged", async () => {
    for (const fx of [r.plain, r.nasty]) {
      const dir = tempDir("pibake-chroot-");
      writeStage(fx, dir);
      // Stand-ins for the commands the script runs inside the image: each records its arguments.
      const bin = path.join(dir, "bin");
      const log = path.join(dir, "calls");
      mkdirSync(bin);
      for (const cmd of ["chown", "usermod", "systemctl"]) {
        const stub = path.join(bin, cmd);
        writeFileSync(stub, `#!/bin/bash\n{ printf '%s\\0' "${cmd}" "$@"; printf '\\n'; } >> "${log}"\n[ "$1" = list-unit-files ] && exit 1\nexit 0\n`, {
          mode: 0o755,
        });
      }
      const script = path.join(dir, "00-broker/02-run-chroot.sh");
      const res = await execa("bash", ["--norc", "--noprofile", "-e", script], {
        stdin: "ignore",
        reject: false,
        timeout: 10_000,
        cwd: path.join(dir, "00-broker"),
        env: { PATH: `${bin}:/usr/bin:/bin`, HOME: dir },
        extendEnv: false,
      });
      expect(res.exitCode, `${res.stdout}${res.stderr}`).toBe(0);
      const calls = readFileSync(log, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split("\0").slice(0, -1));
      const usermod = calls.filter((c) => c[0] === "usermod");
      expect(usermod).toEqual([["usermod", "--password", fx.secrets.userPasswordHash, fx.model.user.name]]);
      expect(fx.secrets.userPasswordHash).toMatch(/^\$6\$/);
      const owned = fx.rendered.overlay.filter((f) => f.owner !== "root" || f.group !== "root").map((f) => ["chown", `${f.owner}:${f.group}`, `/${f.path}`]);
      expect(owned.length).toBeGreaterThanOrEqual(3);
      expect(calls.filter((c) => c[0] === "chown")).toEqual(expect.arrayContaining(owned));
      expect(calls).toContainEqual(["systemctl", "enable", "mosquitto.service"]);
      expect(calls).toContainEqual(["systemctl", "enable", "ddclient.service"]);
      expect(calls).toContainEqual(["systemctl", "enable", "apt-daily.timer", "apt-daily-upgrade.timer"]);
      const all = readFileSync(log, "utf8") + res.stdout + res.stderr;
      expect(all).not.toContain(fx.clear.userPassword);
    }
    expect(existsSync(CANARY)).toBe(false);
  });

  it("01-run.sh unpacks the overlay into ROOTFS_DIR, inside its chroot, with the rendered modes", async () => {
    const fx = r.nasty;
    const dir = tempDir("pibake-run-");
    writeStage(fx, dir);
    const rootfs = path.join(dir, "rootfs");
    await hostChroot(rootfs);
    // As pi-gen runs it: on_chroot exported by the runner (here the stage runner's own definition).
    const run = 'source "$1" && export -f on_chroot && exec bash --norc --noprofile -e "$2"';
    const res = await execa("bash", ["-c", run, "run", path.join(repoRoot, "stages/host/on-chroot.sh"), path.join(dir, "00-broker/01-run.sh")], {
      stdin: "ignore",
      reject: false,
      timeout: 20_000,
      cwd: path.join(dir, "00-broker"),
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ROOTFS_DIR: rootfs },
      extendEnv: false,
    });
    expect(res.exitCode, `${res.stdout}${res.stderr}`).toBe(0);
    for (const f of fx.rendered.overlay) {
      const p = path.join(rootfs, f.path);
      expect(readFileSync(p).equals(f.content), f.path).toBe(true);
      expect((statSync(p).mode & 0o7777).toString(8), f.path).toBe(f.mode.toString(8));
    }
    expect(existsSync(CANARY)).toBe(false);
  });
});

describe("the scripts pibake runs on the Pi and on the build host", () => {
  // They run on a running broker (push's as root, check's as the first user) or, on-chroot.sh, on the build host, from stages/ as they are (no template).
  it.each(["stages/push/inspect.sh", "stages/push/apply.sh", "stages/check/facts.sh", "stages/host/on-chroot.sh"])("%s passes shellcheck", async (rel) => {
    const r = await execa("shellcheck", ["-s", "bash", path.basename(rel)], { cwd: path.join(repoRoot, path.dirname(rel)), reject: false, timeout: 30_000 });
    expect(`${r.stdout}${r.stderr}`).toBe("");
    expect(r.exitCode).toBe(0);
  });
});

describe("the test fixtures' own scripts", () => {
  // The fixture builders and the pi-gen scaffolding run as root on test machines: they get the same scrutiny as the stage.
  const scripts = [
    ...["lib.sh", "arm64-rootfs.sh", "cloud-init-rootfs.sh", "base-image.sh", "qemu-kernel.sh", "node-red.sh"].map((f) => `scripts/fixtures/${f}`),
    ...["losetup", "mount", "umount", "qemu-arm", "scaffold.sh"].map((f) => `test/fixtures/pi-gen/bin/${f}`),
    "test/fixtures/pi-gen/debian-base/prerun.sh",
    "test/fixtures/pi-gen/debian-base/00-system/01-run.sh",
    "test/fixtures/pi-gen/debian-base/00-system/02-run.sh",
    "test/helpers/pi-sandbox.sh",
    "test/helpers/arm64-chroot.sh",
  ];
  it.each(scripts)("%s passes shellcheck", async (rel) => {
    const r = await execa("shellcheck", ["-x", path.basename(rel)], { cwd: path.join(repoRoot, path.dirname(rel)), reject: false, timeout: 30_000 });
    expect(`${r.stdout}${r.stderr}`).toBe("");
    expect(r.exitCode).toBe(0);
  });
});
