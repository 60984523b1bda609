/**
 * The README's journey as a person who is not root: `sudo -E pibake …` first,
 * then pibake as themselves. A test user is made (useradd, a unique name,
 * removed afterwards); "under sudo" is this root process with SUDO_USER,
 * SUDO_UID and SUDO_GID set as sudo sets them (and once the real sudo, the
 * user allowed it by a sudoers.d file of the test's), and "as themselves" is
 * runuser.
 * Everything pibake made must be theirs, and what a state directory made by
 * root (as an older pibake did) does to them is said with the fix.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { binReadableBy, repoRoot, secretEnv, validConfig, writeJson } from "./helpers/cli.js";
import { startRenderedBroker } from "./helpers/mosquitto.js";
import { freePort } from "./helpers/net.js";
import { removeAllFixtures, renderFixture } from "./helpers/render-fixture.js";
import { startServer } from "./helpers/server.js";

function has(program: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${program}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const canRun = process.getuid?.() === 0 && ["useradd", "userdel", "runuser", "getent"].every(has);
const CHECK_TIMEOUT_MS = 40_000;

describe.skipIf(!canRun)("pibake under sudo, then as the user", () => {
  const user = `pbk${Date.now().toString(36).slice(-6)}${process.pid.toString(36)}`;
  let uid = -1;
  let gid = -1;
  let home = "";
  let work = "";
  let bin = path.join(repoRoot, "bin/pibake.js");

  beforeAll(async () => {
    execFileSync("useradd", ["--create-home", "--shell", "/bin/sh", "--user-group", user]);
    const entry = execFileSync("getent", ["passwd", user], { encoding: "utf8" }).trim().split(":");
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    home = entry[5]!;
    work = mkdtempSync(path.join(os.tmpdir(), "pibake-sudo-"));
    chownSync(work, uid, gid);
    bin = await binReadableBy(["runuser", "-u", user, "--"], work);
  }, 120_000);

  afterAll(() => {
    removeAllFixtures();
    if (work) rmSync(work, { recursive: true, force: true });
    try {
      execFileSync("userdel", ["--remove", user], { stdio: "ignore" });
    } catch {
      // Never made.
    }
  });

  /** The config and its directory, as the user keeps them. */
  function project(name: string, patch: (c: Record<string, any>) => void = () => {}): { dir: string; config: string; data: Record<string, any> } {
    const dir = path.join(work, name);
    mkdirSync(dir);
    const config = validConfig();
    config.nodeRed = { enabled: false };
    patch(config);
    const file = writeJson(path.join(dir, "broker.json"), config);
    chownSync(dir, uid, gid);
    chownSync(file, uid, gid);
    return { dir, config: file, data: config };
  }

  /** As root under `sudo -E`: the user's environment, with what sudo sets. */
  function underSudo(args: string[], cwd: string, env: Record<string, string> = secretEnv) {
    return execa(process.execPath, [bin, ...args], {
      reject: false,
      cwd,
      timeout: 60_000,
      stdin: "ignore",
      env: {
        ...env,
        SUDO_USER: user,
        SUDO_UID: String(uid),
        SUDO_GID: String(gid),
        SUDO_COMMAND: `${bin} ${args.join(" ")}`,
        HOME: "/root",
        USER: "root",
        LOGNAME: "root",
        CI: "true",
      },
      extendEnv: true,
    });
  }

  /** As the user, with runuser (no sudo variables). */
  function asUser(args: string[], cwd: string, timeout = 60_000) {
    return execa("runuser", ["-u", user, "--", process.execPath, bin, ...args], {
      reject: false,
      cwd,
      timeout,
      stdin: "ignore",
      env: { ...secretEnv, HOME: home, USER: user, LOGNAME: user, CI: "true", SUDO_USER: "", SUDO_UID: "", SUDO_GID: "" },
      extendEnv: true,
    });
  }

  /** Every path below dir (dir too) that is not owned by the user. */
  function notTheirs(dir: string): string[] {
    const found: string[] = [];
    const walk = (p: string) => {
      const st = lstatSync(p);
      if (st.uid !== uid || st.gid !== gid) found.push(`${path.relative(work, p) || "."} (${st.uid}:${st.gid})`);
      if (st.isDirectory()) for (const e of readdirSync(p)) walk(path.join(p, e));
    };
    walk(dir);
    return found;
  }

  const output = (r: { stdout?: unknown; stderr?: unknown }) => `${String(r.stdout ?? "")}\n${String(r.stderr ?? "")}`;

  it("render under sudo leaves everything to the user, who then exports, shows and renders again", async () => {
    const { dir, config } = project("journey");
    const first = await underSudo(["render", config, "--out", "deploy/render"], dir);
    expect(first.exitCode, output(first)).toBe(0);
    expect(output(first)).toMatch(/CA: +created in .*\.pibake\/test-broker/);
    const exported = await underSudo(["ca", "export", config, "--out", "deploy/ca-sudo.crt"], dir);
    expect(exported.exitCode, output(exported)).toBe(0);
    // The state directory, its files, --out and the deploy/ made for it, and the exported certificate.
    expect(readdirSync(path.join(dir, ".pibake/test-broker"))).toContain("ca.key");
    expect(notTheirs(dir)).toEqual([]);
    expect(lstatSync(path.join(dir, ".pibake/test-broker")).mode & 0o777).toBe(0o700);
    expect(lstatSync(path.join(dir, ".pibake/test-broker/ca.key")).mode & 0o777).toBe(0o600);

    const exportedByUser = await asUser(["ca", "export", config, "--out", "ca.crt"], dir);
    expect(exportedByUser.exitCode, output(exportedByUser)).toBe(0);
    expect(readFileSync(path.join(dir, "ca.crt"), "utf8")).toBe(readFileSync(path.join(dir, "deploy/render/ca.crt"), "utf8"));
    const shown = await asUser(["ca", "show", config], dir);
    expect(shown.exitCode, output(shown)).toBe(0);
    expect(output(shown)).toMatch(/CA:\n {2}subject: +CN=/);
    expect(output(shown)).not.toMatch(/can be read by other users/);
    const again = await asUser(["render", config, "--out", "deploy/render", "--force"], dir);
    expect(again.exitCode, output(again)).toBe(0);
    expect(output(again)).toMatch(/CA: +reused in /);
    expect(notTheirs(dir)).toEqual([]);
  });

  it("pibake check as the user passes against a real mosquitto serving what the render under sudo made", async () => {
    // The static address is the loopback, so that --lan reaches the test's broker.
    const { dir, config, data } = project(
      "check",
      (c) => (c.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] }),
    );
    const rendered = await underSudo(["render", config, "--out", "out"], dir);
    expect(rendered.exitCode, output(rendered)).toBe(0);
    // The broker's files, rendered from a copy of the user's state directory (its CA and server certificate).
    const stateCopy = path.join(work, "check-state");
    cpSync(path.join(dir, ".pibake/test-broker"), stateCopy, { recursive: true });
    const fx = await renderFixture({ config: data, env: secretEnv, stateDir: stateCopy });
    const broker = await startRenderedBroker(fx);
    try {
      const r = await asUser(
        ["check", config, "127.0.0.1", "--lan", "--port-tls", String(broker.tlsPort), "--port-lan", String(broker.lanPort), "--timeout", "3"],
        dir,
        CHECK_TIMEOUT_MS,
      );
      expect(r.exitCode, output(r)).toBe(0);
      expect(output(r)).toMatch(new RegExp(`^ok +tls chain +verified against ${path.join(dir, ".pibake/test-broker/ca.crt")}`, "m"));
      expect(output(r)).toMatch(/^ok +mqtts round trip/m);
      expect(output(r)).toMatch(/^all passed/m);
    } finally {
      await broker.broker.stop();
    }
    expect(notTheirs(dir)).toEqual([]);
  });

  it("render under sudo -E, which keeps the user's HOME, asks the npm registry as the user: their ~/.npm stays theirs", async () => {
    const { dir, config } = project("npm-home", (c) => {
      c.nodeRed = { enabled: true };
    });
    const asked: string[] = [];
    const registry = http.createServer((req, res) => {
      const name = decodeURIComponent((req.url ?? "/").slice(1));
      asked.push(name);
      const versions = { "4.1.13": { name, version: "4.1.13", engines: { node: ">=18.5" }, dist: { tarball: "http://127.0.0.1/x.tgz", shasum: "0" } } };
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ name, "dist-tags": { latest: "4.1.13" }, versions, time: { "4.1.13": "2025-01-01T00:00:00.000Z" } }));
    });
    await new Promise<void>((resolve) => registry.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(registry.address() as net.AddressInfo).port}/`;
      // Without the npm_config_* that npm/npx running this test set (npm_config_cache among them): npm finds its cache from HOME.
      const outside = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
      const r = await execa(process.execPath, [bin, "render", config, "--out", "deploy/render"], {
        reject: false,
        cwd: dir,
        timeout: 60_000,
        stdin: "ignore",
        env: {
          ...outside,
          ...secretEnv,
          PIBAKE_OFFLINE: "0",
          npm_config_registry: url,
          SUDO_USER: user,
          SUDO_UID: String(uid),
          SUDO_GID: String(gid),
          HOME: home,
          USER: "root",
          LOGNAME: "root",
          CI: "true",
        },
        extendEnv: false,
      });
      expect(r.exitCode, output(r)).toBe(0);
      expect(asked).toContain("node-red");
      expect(existsSync(path.join(home, ".npm"))).toBe(true);
      expect(notTheirs(home)).toEqual([]);
      expect(notTheirs(dir)).toEqual([]);
    } finally {
      await new Promise((resolve) => registry.close(resolve));
    }
  });

  it("pibake check --ssh and push under sudo log in with the user's own key (~/.ssh of SUDO_USER), not root's", async () => {
    const sshdDir = mkdtempSync(path.join(os.tmpdir(), "pibake-sudo-sshd-"));
    try {
      chmodSync(sshdDir, 0o755);
      const keygen = (file: string, comment: string) => execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { timeout: 20_000 });
      await keygen(path.join(sshdDir, "hostkey"), "host");
      // The user's key, where ssh looks by default; root has no such key.
      const sshDir = path.join(home, ".ssh");
      const { dir, config } = project("check-ssh", (c) => {
        c.network = { interface: "eth0", address: "127.0.0.1/8", gateway: "127.0.0.2", dns: ["127.0.0.2"] };
        c.user.sshKeys = [];
      });
      // Before the key is made, push under sudo names where it looked: the user's home, not root's.
      const noKey = await underSudo(["push", config, "127.0.0.1", "--dry-run"], dir);
      expect(noKey.exitCode, output(noKey)).toBe(2);
      expect(output(noKey)).toContain(`no SSH key at ${path.join(sshDir, "id_ed25519")}`);
      mkdirSync(sshDir, { mode: 0o700 });
      await keygen(path.join(sshDir, "id_ed25519"), "the user's laptop key");
      execFileSync("chown", ["-R", `${user}:`, sshDir]);
      const userKey = readFileSync(path.join(sshDir, "id_ed25519.pub"), "utf8").trim();
      const data = JSON.parse(readFileSync(config, "utf8"));
      data.user.sshKeys = [userKey];
      writeJson(config, data);
      const rendered = await underSudo(["render", config, "--out", "out"], dir);
      expect(rendered.exitCode, output(rendered)).toBe(0);
      const sshPort = await freePort();
      writeFileSync(path.join(sshdDir, "authorized_keys"), `${userKey}\n`, { mode: 0o644 });
      writeFileSync(
        path.join(sshdDir, "sshd_config"),
        [
          `Port ${sshPort}`,
          "ListenAddress 127.0.0.1",
          `HostKey ${sshdDir}/hostkey`,
          "PidFile none",
          "UsePAM no",
          "StrictModes no",
          "PasswordAuthentication no",
          "KbdInteractiveAuthentication no",
          `AuthorizedKeysFile ${sshdDir}/authorized_keys`,
          "",
        ].join("\n"),
      );
      // The Pi's first user (admin) exists only for this sshd: passwd and shadow with it are bind-mounted in a mount namespace of its own.
      writeFileSync(path.join(sshdDir, "passwd"), readFileSync("/etc/passwd", "utf8") + `admin:x:4242:4242::${sshdDir}:/bin/sh\n`);
      writeFileSync(path.join(sshdDir, "shadow"), readFileSync("/etc/shadow", "utf8") + "admin:*:19000:0:99999:7:::\n", { mode: 0o600 });
      const script = `mount --bind ${sshdDir}/passwd /etc/passwd && mount --bind ${sshdDir}/shadow /etc/shadow && mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec /usr/sbin/sshd -D -e -f ${sshdDir}/sshd_config`;
      const sshd = await startServer("unshare", ["-m", "sh", "-c", script], {
        ready: /Server listening on 127\.0\.0\.1 port/,
        ms: 10_000,
        stopWith: "SIGTERM",
        failure: (log) => `sshd did not start within 10 s (CI installs openssh-server):\n${log}`,
      });
      try {
        const args = [
          "check",
          config,
          "127.0.0.1",
          "--lan",
          "--port-tls",
          String(await freePort()),
          "--port-lan",
          String(await freePort()),
          "--ssh",
          "--port-ssh",
          String(sshPort),
          "--timeout",
          "5",
          "--json",
        ];
        const r = await underSudo(args, dir);
        const report = JSON.parse(String(r.stdout)) as { checks: { name: string; status: string; detail: string }[] };
        const login = report.checks.find((c) => c.name === "ssh key login");
        expect(login?.status, `${output(r)}\n${sshd.log()}`).toBe("ok");
        expect(login?.detail).toMatch(/accepts the key SHA256:\S+ \(the user's laptop key\) of user\.sshKeys/);
        // push under sudo logs in with the same key (the test's sshd has no sudo for admin, so it stops there),
        // and the host key it remembers in the state directory is the user's file.
        const pushed = await underSudo(["push", config, "127.0.0.1", "--port", String(sshPort), "--dry-run"], dir);
        expect(pushed.exitCode, `${output(pushed)}\n${sshd.log()}`).toBe(1);
        // Past the login: the Pi's sudo is the first thing that fails.
        expect(output(pushed)).toContain("sudo on 127.0.0.1 refused the password of user.password for admin");
        expect(sshd.log()).toMatch(/Accepted publickey for admin from 127\.0\.0\.1 port \d+ ssh2: ED25519 SHA256:\S+$/m);
        expect(lstatSync(path.join(dir, ".pibake/test-broker/known_hosts")).uid).toBe(uid);
      } finally {
        await sshd.stop();
      }
      expect(notTheirs(dir)).toEqual([]);
    } finally {
      rmSync(sshdDir, { recursive: true, force: true });
    }
  });

  it("a state directory root made (an older pibake under sudo) is named with its owner and the chown that fixes it", async () => {
    const { dir, config } = project("locked");
    // As root without the sudo variables: .pibake/ and the state directory are root's, 0700.
    const byRoot = await execa(process.execPath, [bin, "render", config, "--out", path.join(work, "locked-out")], {
      reject: false,
      cwd: dir,
      env: { ...secretEnv, CI: "true", SUDO_USER: "", SUDO_UID: "", SUDO_GID: "" },
    });
    expect(byRoot.exitCode, output(byRoot)).toBe(0);
    const pibakeDir = path.join(dir, ".pibake");
    expect(lstatSync(pibakeDir).uid).toBe(0);
    const fix = `${pibakeDir} belongs to root, mode 0700 (pibake run as root made it); make it yours: sudo chown -R ${user}: ${pibakeDir}`;
    for (const args of [
      ["ca", "show", config],
      ["ca", "export", config],
      ["check", config, "127.0.0.1"],
      ["render", config, "--out", "again"],
      ["push", config, "127.0.0.1", "--dry-run", "--ssh-key", "/dev/null"],
    ]) {
      const r = await asUser(args, dir);
      expect(r.exitCode, `${args[0]}: ${output(r)}`).toBe(1);
      expect(output(r), args[0]).toContain(`the state directory ${path.join(pibakeDir, "test-broker")} is there, but ${user} cannot`);
      expect(output(r), args[0]).toContain(fix);
      expect(output(r), args[0]).not.toMatch(/no CA in|EACCES|cannot create the state directory/);
    }
    // The fix it names works.
    execFileSync("chown", ["-R", `${user}:`, pibakeDir]);
    const shown = await asUser(["ca", "show", config], dir);
    expect(shown.exitCode, output(shown)).toBe(0);

    // A file of root's in the user's own state directory: the directory is named for the fix.
    chownSync(path.join(pibakeDir, "test-broker/ca.crt"), 0, 0);
    chmodSync(path.join(pibakeDir, "test-broker/ca.crt"), 0o600);
    const file = await asUser(["ca", "show", config], dir);
    expect(file.exitCode, output(file)).toBe(1);
    expect(output(file)).toContain(
      `${path.join(pibakeDir, "test-broker/ca.crt")} belongs to root, mode 0600 (pibake run as root made it); make it yours: sudo chown -R ${user}: ${path.join(pibakeDir, "test-broker")}`,
    );
  });

  it.skipIf(!has("sudo") || !existsSync("/etc/sudoers.d"))(
    "with the real sudo: the user's sudo -E render leaves everything theirs, and their plain sudo names what it dropped",
    async () => {
      // The user may become root without a password, for this test only.
      const sudoers = path.join("/etc/sudoers.d", `pibake-test-${user}`);
      writeFileSync(sudoers, `${user} ALL=(root) NOPASSWD: ALL\n`, { mode: 0o440 });
      try {
        const { dir, config } = project("real-sudo");
        const viaSudo = (sudoArgs: string[], args: string[]) =>
          execa("runuser", ["-u", user, "--", "sudo", "-n", ...sudoArgs, process.execPath, bin, ...args], {
            reject: false,
            cwd: dir,
            timeout: 60_000,
            stdin: "ignore",
            env: { ...secretEnv, HOME: home, USER: user, LOGNAME: user, CI: "true" },
            extendEnv: true,
          });
        const rendered = await viaSudo(["-E"], ["render", config, "--out", "deploy/render"]);
        expect(rendered.exitCode, output(rendered)).toBe(0);
        expect(output(rendered)).toMatch(/CA: +created in /);
        expect(notTheirs(dir)).toEqual([]);
        const shown = await asUser(["ca", "show", config], dir);
        expect(shown.exitCode, output(shown)).toBe(0);
        // Without -E, sudo's env_reset drops the secrets.
        const dropped = await viaSudo([], ["validate", config]);
        expect(dropped.exitCode, output(dropped)).toBe(2);
        expect(output(dropped)).toContain("environment variable T_USER_PW is not set: sudo does not pass the environment on; run it as sudo -E");
      } finally {
        rmSync(sudoers, { force: true });
      }
    },
  );

  it("a secret in an environment variable that sudo dropped says so, and what to do", async () => {
    const { dir, config } = project("no-env");
    const r = await underSudo(["render", config, "--out", "out"], dir, {});
    expect(r.exitCode, output(r)).toBe(2);
    expect(output(r)).toContain(
      `user.password: environment variable T_USER_PW is not set: sudo does not pass the environment on; run it as sudo -E (or sudo --preserve-env=T_USER_PW), or refer to a file instead ({ "file": "path" })`,
    );
    // Without sudo, the plain message.
    const plain = await execa(process.execPath, [bin, "validate", config], { reject: false, cwd: dir, env: { CI: "true", SUDO_USER: "" }, extendEnv: true });
    expect(output(plain)).toMatch(/environment variable T_USER_PW is not set\n/);
  });
});
