/**
 * The README's journey as a person who is not root: `sudo -E pibake …` first,
 * then pibake as themselves. A test user is made (useradd, a unique name,
 * removed afterwards); "under sudo" is this root process with SUDO_USER,
 * SUDO_UID and SUDO_GID set as sudo sets them, and "as themselves" is runuser.
 * Everything pibake made must be theirs, and what a state directory made by
 * root (as an older pibake did) does to them is said with the fix.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, cpSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, secretEnv, validConfig, writeJson } from "./helpers/cli.js";

function has(program: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${program}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const canRun = process.getuid?.() === 0 && ["useradd", "userdel", "runuser", "getent"].every(has);

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
    // The repository may lie where the user cannot read it (/work, /root): then they run a copy.
    const version = await execa("runuser", ["-u", user, "--", process.execPath, bin, "--version"], { reject: false, cwd: "/" });
    if (version.exitCode !== 0) {
      const copy = path.join(work, "pibake");
      for (const part of ["package.json", "bin", "dist", "overlays", "stages", "schema", "node_modules"]) cpSync(path.join(repoRoot, part), path.join(copy, part), { recursive: true });
      execFileSync("chmod", ["-R", "a+rX", copy]);
      bin = path.join(copy, "bin/pibake.js");
    }
  }, 120_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
    try {
      execFileSync("userdel", ["--remove", user], { stdio: "ignore" });
    } catch {
      // Never made.
    }
  });

  /** The config and its directory, as the user keeps them. */
  function project(name: string): { dir: string; config: string } {
    const dir = path.join(work, name);
    mkdirSync(dir);
    const config = validConfig();
    config.nodeRed = { enabled: false };
    const file = writeJson(path.join(dir, "broker.json"), config);
    chownSync(dir, uid, gid);
    chownSync(file, uid, gid);
    return { dir, config: file };
  }

  /** As root under `sudo -E`: the user's environment, with what sudo sets. */
  function underSudo(args: string[], cwd: string, env: Record<string, string> = secretEnv) {
    return execa(process.execPath, [bin, ...args], {
      reject: false,
      cwd,
      timeout: 60_000,
      stdin: "ignore",
      env: { ...env, SUDO_USER: user, SUDO_UID: String(uid), SUDO_GID: String(gid), SUDO_COMMAND: `${bin} ${args.join(" ")}`, HOME: "/root", USER: "root", LOGNAME: "root", CI: "true" },
      extendEnv: true,
    });
  }

  /** As the user, with runuser (no sudo variables). */
  function asUser(args: string[], cwd: string) {
    return execa("runuser", ["-u", user, "--", process.execPath, bin, ...args], {
      reject: false,
      cwd,
      timeout: 60_000,
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

  it("a state directory root made (an older pibake under sudo) is named with its owner and the chown that fixes it", async () => {
    const { dir, config } = project("locked");
    // As root without the sudo variables: .pibake/ and the state directory are root's, 0700.
    const byRoot = await execa(process.execPath, [bin, "render", config, "--out", path.join(work, "locked-out")], { reject: false, cwd: dir, env: { ...secretEnv, CI: "true", SUDO_USER: "", SUDO_UID: "", SUDO_GID: "" } });
    expect(byRoot.exitCode, output(byRoot)).toBe(0);
    const pibakeDir = path.join(dir, ".pibake");
    expect(lstatSync(pibakeDir).uid).toBe(0);
    const fix = `${pibakeDir} belongs to root, mode 0700 (made by pibake under sudo); make it yours: sudo chown -R ${user}: ${pibakeDir}`;
    for (const args of [["ca", "show", config], ["ca", "export", config], ["check", config, "127.0.0.1"], ["render", config, "--out", "again"], ["push", config, "127.0.0.1", "--dry-run", "--ssh-key", "/dev/null"]]) {
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
    expect(output(file)).toContain(`${path.join(pibakeDir, "test-broker/ca.crt")} belongs to root, mode 0600 (made by pibake under sudo); make it yours: sudo chown -R ${user}: ${path.join(pibakeDir, "test-broker")}`);
  });

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
