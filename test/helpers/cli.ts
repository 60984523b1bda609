import { execa } from "execa";
import { cpSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const bin = path.join(repoRoot, "bin/pibake.js");

/** Run the built CLI (npm test compiles first) as a user would, with no terminal. */
export async function pibake(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeout?: number } = {}) {
  return execa(process.execPath, [bin, ...args], {
    reject: false,
    env: { ...opts.env, CI: "true" },
    extendEnv: true,
    cwd: opts.cwd ?? repoRoot,
    timeout: opts.timeout ?? 60_000,
    stdin: "ignore",
  });
}

/**
 * A temporary directory removed after the test; `using`-free for Node 20.
 * Made when `dir` is first read: a skipped describe block, whose afterAll
 * never runs, then leaves nothing behind.
 */
export function tempDir(prefix = "pibake-test-"): { readonly dir: string; cleanup: () => void } {
  let made: string | undefined;
  return {
    get dir() {
      made ??= mkdtempSync(path.join(os.tmpdir(), prefix));
      return made;
    },
    cleanup: () => {
      if (made) rmSync(made, { recursive: true, force: true });
    },
  };
}

export function writeJson(file: string, value: unknown): string {
  writeFileSync(file, JSON.stringify(value, null, 2));
  return file;
}

/**
 * How long a test waits for a fixture of scripts/fixtures/ (each made once,
 * then cached): on a new 2-core machine the stand-in's package layer took
 * more than 30 minutes under qemu-user, and another script may hold the lock.
 * The hooks that wait for one add their own work to it.
 */
export const FIXTURE_TIMEOUT_MS = 3_600_000;

/** A complete, valid config with every secret as an env reference; tests change one thing at a time. */
export function validConfig(): Record<string, any> {
  return {
    image: {
      name: "test-broker",
      release: "trixie",
      arch: "arm64",
      hostname: "broker",
      timezone: "Europe/Berlin",
      locale: "en_GB.UTF-8",
      keyboard: { keymap: "de", layout: "German" },
    },
    user: {
      name: "admin",
      password: { env: "T_USER_PW" },
      // Not examples/broker.json's key, which validate warns about.
      sshKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIANloiQLObRHwt1kO2rR01jUxi854YLC1GmV7S9zBJdo test@host"],
      passwordSsh: false,
    },
    network: { interface: "eth0", address: "192.168.1.10/24", gateway: "192.168.1.1", dns: ["192.168.1.1", "9.9.9.9"] },
    mqtt: {
      lanPort: 1883,
      tlsPort: 8883,
      persistence: true,
      users: [
        { name: "sensors", password: { env: "T_MQTT_SENSORS_PW" }, topics: [{ access: "write", topic: "home/sensors/#" }] },
        { name: "phone", password: { env: "T_MQTT_PHONE_PW" }, topics: [{ access: "read", topic: "home/#" }] },
      ],
    },
    tls: { domain: "home.freemyip.com", extraNames: ["broker.lan"] },
    ddns: { provider: "freemyip", token: { env: "T_DDNS_TOKEN" }, interval: 300 },
  };
}

/** Secret values for validConfig(): distinctive so that a leak is easy to find in any output. */
export const secretEnv = {
  T_USER_PW: "User-Secret-9f3c'\"$`x",
  T_MQTT_SENSORS_PW: "Sensors-Secret-71ab",
  T_MQTT_PHONE_PW: "Phone-Secret-22cd",
  T_DDNS_TOKEN: "DdnsToken5e6f7a8b",
};

/** What running pibake needs of the repository. */
const RUNTIME_PARTS = ["package.json", "bin", "dist", "overlays", "stages", "schema", "data", "node_modules"];

/**
 * The pibake.js another user can run: this repository's, or, where that user
 * cannot read all of it (/work, /root), a readable copy made in `into`.
 * `asUser` is the command prefix that runs a program as them (runuser, setpriv).
 */
export async function binReadableBy(asUser: readonly string[], into: string): Promise<string> {
  const unreadable = await execa(
    asUser[0]!,
    [...asUser.slice(1), "find", ...RUNTIME_PARTS.map((p) => path.join(repoRoot, p)), "!", "-readable", "-print", "-quit"],
    { reject: false, cwd: "/" },
  );
  if (unreadable.exitCode === 0 && unreadable.stdout.trim() === "") return bin;
  const copy = path.join(into, "pibake");
  for (const part of RUNTIME_PARTS) cpSync(path.join(repoRoot, part), path.join(copy, part), { recursive: true });
  await execa("chmod", ["-R", "a+rX", copy]);
  return path.join(copy, "bin/pibake.js");
}
