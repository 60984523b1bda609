/**
 * Nothing lost: no command replaces or deletes the config, a file it refers
 * to, or the state directory (with the CA key), whatever its flags. Each case
 * runs the real CLI against a directory laid out as users lay theirs out
 * (config, secrets/ beside it, the default state directory .pibake/), and
 * checks that every one of those files is still there byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pibake, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";

/** Every file below `dir` with its SHA-256, to compare before and after a command. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = path.join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else out[path.relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  walk(dir);
  return out;
}

describe("outputs never replace the config, its secret files or the state directory", () => {
  const tmp = tempDir("pibake-protect-");
  const home = path.join(tmp.dir, "home");
  const cfg = path.join(home, "broker.json");
  const stateDir = path.join(home, ".pibake", "test-broker");
  let kept: Record<string, string> = {};

  beforeAll(async () => {
    mkdirSync(path.join(home, "secrets"), { recursive: true });
    writeFileSync(path.join(home, "secrets", "phone.txt"), "Phone-File-Secret-31\n");
    const c = validConfig();
    c.mqtt.users[1].password = { file: "secrets/phone.txt" };
    writeJson(cfg, c);
    // A first render makes the state directory with its CA, as a user's first run does.
    const first = await pibake(["render", cfg, "--out", path.join(tmp.dir, "first")], { env: secretEnv });
    expect(first.exitCode, first.stderr).toBe(0);
    expect(existsSync(path.join(stateDir, "ca.key"))).toBe(true);
    kept = snapshot(home);
  });
  afterAll(tmp.cleanup);

  const refusals: [string, () => string[], RegExp][] = [
    ["render --out the config's directory --force", () => ["render", cfg, "--out", home, "--force"], /--out \S+ contains the config/],
    ["render --out . beside the config --force", () => ["render", cfg, "--out", ".", "--force"], /--out \. contains the config/],
    ["render --out the state directory --force", () => ["render", cfg, "--out", stateDir, "--force"], /is the state directory \(it holds the CA key\)/],
    [
      "render --out the directory holding the state directory --force",
      () => ["render", cfg, "--out", path.join(home, ".pibake"), "--force"],
      /contains the state directory/,
    ],
    ["render --out inside the state directory", () => ["render", cfg, "--out", path.join(stateDir, "render")], /lies inside the state directory/],
    [
      "render --out the secrets directory --force",
      () => ["render", cfg, "--out", path.join(home, "secrets"), "--force"],
      /contains the secret file of mqtt\.users\[1\]\.password/,
    ],
    [
      "render --out a link to the state directory --force",
      () => ["render", cfg, "--out", path.join(tmp.dir, "link-to-state"), "--force"],
      /is the state directory/,
    ],
    ["render --out the config file itself", () => ["render", cfg, "--out", cfg, "--force"], /is the config/],
    [
      "render --out a given --state directory",
      () => ["render", cfg, "--state", path.join(tmp.dir, "other-state"), "--out", path.join(tmp.dir, "other-state", "x")],
      /lies inside the state directory/,
    ],
    ["ca export --out the config", () => ["ca", "export", cfg, "--out", cfg], /--out \S+ is the config/],
    ["ca export --out the config, even with --force", () => ["ca", "export", cfg, "--out", cfg, "--force"], /is the config/],
    ["ca export --out ca.key", () => ["ca", "export", cfg, "--out", path.join(stateDir, "ca.key"), "--force"], /lies inside the state directory/],
    ["ca export --state --out ca.key", () => ["ca", "export", "--state", stateDir, "--out", path.join(stateDir, "ca.key")], /lies inside the state directory/],
    [
      "ca export --out a secret file",
      () => ["ca", "export", cfg, "--out", path.join(home, "secrets", "phone.txt"), "--force"],
      /is the secret file of mqtt\.users\[1\]\.password/,
    ],
    [
      "build --out the state directory",
      () => ["build", cfg, "--out", stateDir, "--base", path.join(tmp.dir, "no-such.img")],
      /--out \S+ is the state directory/,
    ],
    ["build --out the config's directory", () => ["build", cfg, "--out", home, "--base", path.join(tmp.dir, "no-such.img")], /contains the config/],
  ];

  it.each(refusals)("%s: exit 2 with the reason, nothing changed", async (_name, args, words) => {
    if (!existsSync(path.join(tmp.dir, "link-to-state"))) symlinkSync(stateDir, path.join(tmp.dir, "link-to-state"));
    const r = await pibake(args(), { env: secretEnv, cwd: home });
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toMatch(words);
    expect(r.stderr).toMatch(/pibake never replaces or deletes it/);
    expect(r.stderr).not.toMatch(/unexpected error|\n\s+at /);
    expect(snapshot(home)).toEqual(kept);
  });

  it("ca export --out refuses an existing file that is not a certificate unless --force, and replaces an older certificate", async () => {
    const notes = path.join(tmp.dir, "notes.txt");
    writeFileSync(notes, "my notes\n");
    const refused = await pibake(["ca", "export", cfg, "--out", notes], { env: secretEnv });
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toMatch(/exists and is not a certificate: choose another file, or pass --force/);
    expect(readFileSync(notes, "utf8")).toBe("my notes\n");
    const forced = await pibake(["ca", "export", cfg, "--out", notes, "--force"], { env: secretEnv });
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(readFileSync(notes, "utf8")).toBe(readFileSync(path.join(stateDir, "ca.crt"), "utf8"));
    // An older certificate in the file is replaced without --force.
    writeFileSync(notes, readFileSync(path.join(tmp.dir, "first", "ca.crt")));
    const again = await pibake(["ca", "export", cfg, "--out", notes], { env: secretEnv });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(snapshot(home)).toEqual(kept);
  });

  it("render --force still replaces an ordinary output directory", async () => {
    const out = path.join(tmp.dir, "first");
    writeFileSync(path.join(out, "stray.txt"), "old");
    const r = await pibake(["render", cfg, "--out", out, "--force"], { env: secretEnv });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(existsSync(path.join(out, "stray.txt"))).toBe(false);
    expect(existsSync(path.join(out, "overlay.tar"))).toBe(true);
  });

  it("half a CA is a user-facing error that says how to fix it, and nothing is written", async () => {
    const key = path.join(stateDir, "ca.key");
    renameSync(key, `${key}.aside`);
    try {
      const out = path.join(tmp.dir, "half");
      const r = await pibake(["render", cfg, "--out", out], { env: secretEnv });
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toMatch(/holds only half of the CA \(ca\.crt without ca\.key\): restore the missing file from a backup/);
      expect(r.stderr).not.toMatch(/unexpected error/);
      expect(existsSync(out)).toBe(false);
      expect(existsSync(key)).toBe(false);
    } finally {
      renameSync(`${key}.aside`, key);
    }
    expect(snapshot(home)).toEqual(kept);
  });
});
