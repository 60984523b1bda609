import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import { inject } from "vitest";
import { repoRoot } from "./cli.js";

/**
 * The broker image that test/base-image.test.ts builds first and
 * test/boot.test.ts boots: one config for both, so that in a full run the
 * boot test takes the image over instead of building the same one again
 * (minutes under qemu-user). Run alone, the boot test builds its own.
 */

export const BROKER_DOMAIN = "home.freemyip.com";

declare module "vitest" {
  export interface ProvidedContext {
    /** A directory for the run, made and removed by test/helpers/global-setup.ts. */
    handOverDir: string;
  }
}

/** examples/broker.json as shipped. */
export function exampleConfig(): Record<string, any> {
  return JSON.parse(readFileSync(path.join(repoRoot, "examples/broker.json"), "utf8")) as Record<string, any>;
}

/**
 * examples/broker.json as shipped, Node-RED on and installed on first boot, as the boot test needs it.
 * Changed only where a test must: the secrets are the test's (secretEnv), the SSH key is the test's,
 * the network is QEMU's. Added on top: a Wi-Fi profile and MQTT over WebSockets.
 */
export function brokerImageConfig(sshPublicKey: string, domain = BROKER_DOMAIN): Record<string, any> {
  const c = exampleConfig();
  delete c.$schema;
  c.user.password = { env: "T_USER_PW" };
  c.user.sshKeys = [sshPublicKey];
  c.mqtt.users[0].password = { env: "T_MQTT_SENSORS_PW" };
  c.mqtt.users[1].password = { env: "T_MQTT_PHONE_PW" };
  c.ddns.token = { env: "T_DDNS_TOKEN" };
  c.tls.domain = domain;
  // QEMU's user-mode network: the broker answering at all proves the rendered NetworkManager profile was applied.
  c.network = { interface: "eth0", address: "10.0.2.15/24", gateway: "10.0.2.2", dns: ["10.0.2.3"] };
  // A Wi-Fi profile beside the wired one: the radio must be switched on (QEMU has no Wi-Fi device).
  c.network.wifi = { ssid: "HomeNet", passphrase: { env: "T_WIFI_PW" }, country: "DE" };
  // A browser's way in: MQTT over WebSockets with TLS on 8884.
  c.mqtt.websockets = {};
  return c;
}

function handOverDir(): string | undefined {
  try {
    return inject("handOverDir") || undefined;
  } catch {
    return undefined;
  }
}

/** What the builder keeps of its first build, taken right after it (later builds change the state directory's server certificate). */
export function offerState(files: { config: string; state: string; key: string }): void {
  const dir = handOverDir();
  if (!dir) return;
  const pending = path.join(dir, "pending");
  mkdirSync(pending, { recursive: true });
  cpSync(files.state, path.join(pending, "state"), { recursive: true, preserveTimestamps: true });
  cpSync(files.config, path.join(pending, "config.json"));
  cpSync(files.key, path.join(pending, "id_ed25519"));
  cpSync(`${files.key}.pub`, path.join(pending, "id_ed25519.pub"));
}

/** The image itself, once the builder is done reading it: moved, not copied. */
export function offerImage(image: string): void {
  const dir = handOverDir();
  if (!dir || !existsSync(path.join(dir, "pending", "config.json")) || !existsSync(image)) return;
  renameSync(image, path.join(dir, "pending", "broker.img"));
  renameSync(path.join(dir, "pending"), path.join(dir, "ready"));
}

/**
 * Moves a handed-over build to the caller's paths (the image, the state
 * directory, the config, the key pair) if there is one, made from
 * `brokerImageConfig` of its own key; false when there is none, and the
 * caller builds.
 */
export function takeOver(file: { config: string; state: string; key: string; image: string }): boolean {
  const dir = handOverDir();
  const ready = dir ? path.join(dir, "ready") : "";
  if (!dir || !existsSync(path.join(ready, "broker.img"))) return false;
  const key = readFileSync(path.join(ready, "id_ed25519.pub"), "utf8").trim();
  const config = JSON.parse(readFileSync(path.join(ready, "config.json"), "utf8")) as unknown;
  if (!isDeepStrictEqual(config, brokerImageConfig(key))) return false;
  renameSync(path.join(ready, "state"), file.state);
  writeFileSync(file.config, `${JSON.stringify(config, null, 2)}\n`);
  renameSync(path.join(ready, "id_ed25519"), file.key);
  renameSync(path.join(ready, "id_ed25519.pub"), `${file.key}.pub`);
  renameSync(path.join(ready, "broker.img"), file.image);
  return true;
}
