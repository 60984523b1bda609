import { execa } from "execa";
import { createHash } from "node:crypto";
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync } from "node:fs";
import path from "node:path";
import { FIXTURE_TIMEOUT_MS, pibake, repoRoot, secretEnv, writeJson } from "./cli.js";
import { brokerImageConfig } from "./broker-image.js";

/**
 * An image pibake built (`pibake build --base` of the trixie stand-in, as
 * root, under qemu-user: 5 to 8 minutes), made once and cached in
 * $PIBAKE_TEST_CACHE with the state directory (CA, server key) and SSH key
 * that made it. The key is what decides its bytes: the stand-in's file, the
 * config, stages/ and overlays/, and the marker's format; not src/, so that
 * code changes elsewhere do not rebuild it. Grown by what apt's figures for its
 * packages (Node-RED's nodejs among them) ask, as a user's build is: about 3 GB
 * raw, the size of Raspberry Pi OS Lite with pibake's packages, so that the bench
 * and the tests use the same real-size image.
 */
export const CACHE = process.env.PIBAKE_TEST_CACHE ?? "/var/cache/pibake-test";
export const DOMAIN = "home.freemyip.com";
export const env = { ...secretEnv, T_WIFI_PW: "Wifi-Passphrase-Secret-3e1" };
/** Bumped when what the root path records in build.json changes. */
const MARKER_FORMAT = "in-image-1";
/** No --grow: the room comes from apt's figures (a fixed 640M was refused once Node-RED was on). */
const GROW = "apt";

export interface PibakeImage {
  image: string;
  /** The state directory that made it (regenerate copies it). */
  state: string;
  /** The config it was built from (brokerImageConfig with `key`). */
  config: Record<string, any>;
  key: string;
}

function treeDigest(dir: string, hash = createHash("sha256"), rel = ""): ReturnType<typeof createHash> {
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = path.join(rel, e.name);
    hash.update(p);
    if (e.isDirectory()) treeDigest(dir, hash, p);
    else hash.update(readFileSync(path.join(dir, p)));
  }
  return hash;
}

/** The stand-in for Raspberry Pi OS Lite (scripts/fixtures/base-image.sh, cached). */
export async function standInBase(): Promise<string> {
  const r = await execa("bash", [path.join(repoRoot, "scripts/fixtures/base-image.sh"), "trixie"], { timeout: FIXTURE_TIMEOUT_MS });
  return r.stdout.trim();
}

/** The cached pibake-built image, built on first use (root, qemu-aarch64). */
export async function pibakeImage(): Promise<PibakeImage> {
  const base = await standInBase();
  const key = createHash("sha256").update(path.basename(base)).update(MARKER_FORMAT).update(GROW);
  // The config without its SSH key (made with the image): what the build installs follows from it.
  key.update(JSON.stringify(brokerImageConfig("", DOMAIN)));
  treeDigest(path.join(repoRoot, "stages"), key);
  treeDigest(path.join(repoRoot, "overlays"), key);
  const dir = path.join(CACHE, `pibake-built-trixie-${key.digest("hex").slice(0, 16)}`);
  if (!existsSync(path.join(dir, "image.img"))) await buildInto(dir, base);
  const sshKey = path.join(dir, "id_ed25519");
  const config = brokerImageConfig(readFileSync(`${sshKey}.pub`, "utf8").trim(), DOMAIN);
  return { image: path.join(dir, "image.img"), state: path.join(dir, "state"), config, key: sshKey };
}

async function buildInto(dir: string, base: string): Promise<void> {
  const work = `${dir}.tmp-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const sshKey = path.join(work, "id_ed25519");
  await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "pibake-test", "-f", sshKey], { timeout: 30_000 });
  const config = brokerImageConfig(readFileSync(`${sshKey}.pub`, "utf8").trim(), DOMAIN);
  const cfg = writeJson(path.join(work, "broker.json"), config);
  const out = path.join(work, "out");
  const r = await pibake(["build", cfg, "--base", base, "--out", out, "--state", path.join(work, "state"), "--compress", "none", "--log-format", "plain"], {
    env,
    timeout: FIXTURE_TIMEOUT_MS,
  });
  if (r.exitCode !== 0)
    throw new Error(`building the pibake image failed (exit ${r.exitCode}):\n${String(r.stdout).slice(-3000)}\n${String(r.stderr).slice(-3000)}`);
  const img = readdirSync(out).find((f) => f.endsWith(".img"))!;
  renameSync(path.join(out, img), path.join(work, "image.img"));
  rmSync(out, { recursive: true, force: true });
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
}

/** A directory whose only program is the node running the tests: PATH for a run that must start no other program. */
export function nodeOnlyPath(dir: string): string {
  const bin = path.join(dir, "node-only-bin");
  mkdirSync(bin, { recursive: true });
  if (!existsSync(path.join(bin, "node"))) symlinkSync(process.execPath, path.join(bin, "node"));
  chmodSync(dir, 0o755);
  return bin;
}

export interface Regenerated {
  exitCode: number | undefined;
  output: string;
  image?: string;
  out: string;
  state: string;
  config: Record<string, any>;
  /** The SSH key whose public half is in the config (the cached image's). */
  key: string;
}

/**
 * A regeneration of the cached pibake image (pibakeImage) for `domain`, as a
 * user would run it: `pibake build CONFIG --base IMAGE --compress none`, in
 * `dir` with its own copy of the state directory. `asUser` is a command
 * prefix (setpriv …) that runs it as another user, with PATH holding only
 * node; `newServerKey` takes the server key out of the state first, so the
 * image gets a new one; `fromState` starts from another state directory
 * (another regeneration's, for the same certificate and hashes). For the boot test: `(await regenerate(...)).image`
 * is a fast-path image of the broker config with the cached image's SSH key.
 */
export async function regenerate(
  img: PibakeImage,
  opts: {
    dir: string;
    domain: string;
    env?: Record<string, string>;
    asUser?: string[];
    bin?: string;
    newServerKey?: boolean;
    extraArgs?: string[];
    config?: Record<string, any>;
    fromState?: string;
  },
): Promise<Regenerated> {
  const { dir } = opts;
  mkdirSync(dir, { recursive: true });
  const state = path.join(dir, "state");
  cpSync(opts.fromState ?? img.state, state, { recursive: true, preserveTimestamps: true });
  if (opts.newServerKey) for (const f of ["server.key", "server.crt"]) rmSync(path.join(state, f), { force: true });
  const config = opts.config ?? { ...img.config, tls: { ...img.config.tls, domain: opts.domain } };
  const cfg = writeJson(path.join(dir, "broker.json"), config);
  const out = path.join(dir, "out");
  const args = ["build", cfg, "--base", img.image, "--out", out, "--state", state, "--compress", "none", "--log-format", "plain", ...(opts.extraArgs ?? [])];
  const runEnv = { ...env, ...opts.env, CI: "true" };
  let r;
  if (opts.asUser) {
    await execa("chown", ["-R", opts.asUser.find((a) => a.startsWith("--reuid="))!.slice(8), dir]);
    // The user must reach `dir`: its parent is often a private temporary directory.
    chmodSync(path.dirname(dir), 0o755);
    const bin = opts.bin ?? path.join(repoRoot, "bin/pibake.js");
    r = await execa(opts.asUser[0]!, [...opts.asUser.slice(1), "node", bin, ...args], {
      reject: false,
      all: true,
      extendEnv: false,
      env: { ...runEnv, PATH: nodeOnlyPath(dir), HOME: dir },
      cwd: dir,
      timeout: 600_000,
      stdin: "ignore",
    });
  } else {
    r = await execa(process.execPath, [path.join(repoRoot, "bin/pibake.js"), ...args], {
      reject: false,
      all: true,
      env: runEnv,
      cwd: dir,
      timeout: 1_800_000,
      stdin: "ignore",
    });
  }
  const image = existsSync(out) ? readdirSync(out).find((f) => f.endsWith(".img")) : undefined;
  return { exitCode: r.exitCode, output: String(r.all), ...(image ? { image: path.join(out, image) } : {}), out, state, config, key: img.key };
}
