/**
 * Renders a config the way `pibake render` does (loadConfig → prepareSecrets →
 * render), from a config object written to a temporary directory, with every
 * secret given as an environment reference and a temporary state directory.
 * Tests get the Rendered files plus the clear values of the secrets, so that
 * they can log in with them and check that they never leak.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { execa } from "execa";
import path from "node:path";
import { loadConfig } from "../../src/config/load.js";
import type { Model } from "../../src/config/model.js";
import { render, type Rendered } from "../../src/render/index.js";
import { prepareSecrets, StateDir, type Secrets } from "../../src/secrets/index.js";

/** A config as JSON: tests change it freely before rendering. */
export type TestConfig = Record<string, any>;

/** The clear values behind the default config's env references. */
export const DEFAULT_SECRET_ENV: Record<string, string> = {
  PIBAKE_TEST_USER_PASSWORD: "user-Passw0rd-for-tests",
  PIBAKE_TEST_MQTT_SENSORS: "sensors-Secret-1",
  PIBAKE_TEST_MQTT_PHONE: "phone-Secret-22",
  PIBAKE_TEST_MQTT_HUB: "hub-Secret-333",
  PIBAKE_TEST_DDNS_SECRET: "ddnsT0ken4567890abcdef",
  PIBAKE_TEST_WIFI_PASSPHRASE: "wifi-Passphrase-1",
};

export const TEST_SSH_KEYS = [
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F you@laptop",
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl second key (work)",
];

/**
 * Three MQTT users: `sensors` may only write under home/sensors/, `phone` may
 * read home/# and use home/commands/+, `hub` has no rules and may use every topic.
 */
export function baseConfig(): TestConfig {
  return {
    image: {
      name: "pibake-test",
      release: "trixie",
      arch: "arm64",
      hostname: "broker",
      timezone: "Europe/Berlin",
      locale: "en_GB.UTF-8",
      keyboard: { keymap: "gb", layout: "English (UK)" },
    },
    user: {
      name: "admin",
      password: { env: "PIBAKE_TEST_USER_PASSWORD" },
      sshKeys: [...TEST_SSH_KEYS],
      passwordSsh: false,
    },
    network: {
      interface: "eth0",
      address: "192.168.50.10/24",
      gateway: "192.168.50.1",
      dns: ["192.168.50.1", "9.9.9.9"],
    },
    mqtt: {
      lanPort: 1883,
      tlsPort: 8883,
      persistence: true,
      users: [
        { name: "sensors", password: { env: "PIBAKE_TEST_MQTT_SENSORS" }, topics: [{ access: "write", topic: "home/sensors/#" }] },
        {
          name: "phone",
          password: { env: "PIBAKE_TEST_MQTT_PHONE" },
          topics: [
            { access: "read", topic: "home/#" },
            { access: "readwrite", topic: "home/commands/+" },
          ],
        },
        { name: "hub", password: { env: "PIBAKE_TEST_MQTT_HUB" } },
      ],
    },
    tls: { domain: "pibake-test.freemyip.com", extraNames: ["broker.lan", "10.0.0.5"] },
    ddns: { provider: "freemyip", token: { env: "PIBAKE_TEST_DDNS_SECRET" }, interval: 300 },
  };
}

export interface Clear {
  userPassword: string;
  /** MQTT password by user name. */
  mqtt: Record<string, string>;
  /** The ddclient token or password. */
  ddns?: string;
  wifiPassphrase?: string;
}

export interface Fixture {
  /** Temporary directory holding the config; removed by cleanup(). */
  dir: string;
  configPath: string;
  state: StateDir;
  model: Model;
  secrets: Secrets;
  rendered: Rendered;
  clear: Clear;
  /** An overlay file by its path on the Pi (no leading slash); throws when it was not rendered. */
  overlayFile(p: string): Buffer;
  overlayText(p: string): string;
  /** A stage file by its path in the stage directory. */
  stageText(p: string): string;
  cleanup(): void;
}

export interface FixtureOptions {
  config?: TestConfig;
  /** Environment values for the config's env references (default: DEFAULT_SECRET_ENV). */
  env?: Record<string, string>;
  /** Reuse a state directory (e.g. to render twice with the same CA). */
  stateDir?: string;
  /**
   * Start from an empty state directory, as a first `pibake render` does: a CA
   * of its own. By default the state directory starts as a copy of one shared
   * by the test file (see seededStateDir).
   */
  freshCa?: boolean;
}

/** Temporary directories made here, removed by removeAllFixtures() too. */
const made = new Set<string>();

export function tempDir(prefix = "pibake-test-"): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  made.add(d);
  return d;
}

export function removeAllFixtures(): void {
  for (const d of made) rmSync(d, { recursive: true, force: true });
  made.clear();
}

let seedState: string | undefined;

/**
 * A new state directory that starts as a copy of one made once per test file
 * by rendering baseConfig(): its CA (a 3072-bit key takes seconds to make),
 * server key and cached hashes (some are slow on purpose). A render with other
 * names or passwords still issues its own certificate and hashes from there.
 */
async function seededStateDir(dir: string): Promise<string> {
  if (!seedState || !existsSync(path.join(seedState, "ca.key"))) {
    const seedDir = tempDir("pibake-seed-");
    const configPath = path.join(seedDir, "broker.json");
    writeFileSync(configPath, JSON.stringify(baseConfig()));
    seedState = path.join(seedDir, "state");
    await prepareSecrets(loadConfig(configPath, DEFAULT_SECRET_ENV).model, new StateDir(seedState));
  }
  cpSync(seedState, dir, { recursive: true });
  return dir;
}

function reveal(ref: unknown, env: Record<string, string>): string | undefined {
  if (ref && typeof ref === "object" && "env" in ref) return env[(ref as { env: string }).env];
  return typeof ref === "string" ? ref : undefined;
}

export async function renderFixture(opts: FixtureOptions = {}): Promise<Fixture> {
  const config = opts.config ?? baseConfig();
  const env = opts.env ?? DEFAULT_SECRET_ENV;
  const dir = tempDir();
  const configPath = path.join(dir, "broker.json");
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const { model } = loadConfig(configPath, env);
  const state = new StateDir(opts.stateDir ?? (opts.freshCa ? path.join(dir, "state") : await seededStateDir(path.join(dir, "state"))));
  const secrets = await prepareSecrets(model, state);
  const rendered = await render(model, secrets);

  const clear: Clear = {
    userPassword: reveal(config.user.password, env)!,
    mqtt: Object.fromEntries((config.mqtt.users as { name: string; password: unknown }[]).map((u) => [u.name, reveal(u.password, env)!])),
  };
  const ddnsRef = config.ddns ? (config.ddns.token ?? config.ddns.password) : undefined;
  if (ddnsRef) clear.ddns = reveal(ddnsRef, env)!;
  if (config.network.wifi) clear.wifiPassphrase = reveal(config.network.wifi.passphrase, env)!;

  const overlayFile = (p: string) => {
    const f = rendered.overlay.find((o) => o.path === p);
    if (!f) throw new Error(`the render has no overlay file ${p}; it has ${rendered.overlay.map((o) => o.path).join(", ")}`);
    return f.content;
  };
  const stageText = (p: string) => {
    const f = rendered.stage.find((s) => s.path === p);
    if (!f) throw new Error(`the render has no stage file ${p}; it has ${rendered.stage.map((s) => s.path).join(", ")}`);
    return f.content.toString("utf8");
  };
  return {
    dir,
    configPath,
    state,
    model,
    secrets,
    rendered,
    clear,
    overlayFile,
    overlayText: (p) => overlayFile(p).toString("utf8"),
    stageText,
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
      made.delete(dir);
    },
  };
}

/** Replace every occurrence of each secret by "***", for anything a test prints or asserts on. */
export function redactAll(text: string, secrets: (string | undefined)[]): string {
  let out = text;
  for (const s of secrets) if (s) out = out.split(s).join("***");
  return out;
}

/** A self-signed CA certificate that has nothing to do with pibake's (made by openssl, quickly: P-256). */
export async function unrelatedCaPem(): Promise<string> {
  const dir = tempDir("pibake-other-ca-");
  const cert = path.join(dir, "ca.crt");
  await execa(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-subj",
      "/CN=unrelated CA",
      "-days",
      "2",
      "-keyout",
      path.join(dir, "ca.key"),
      "-out",
      cert,
    ],
    { timeout: 20_000 },
  );
  return readFileSync(cert, "utf8");
}
