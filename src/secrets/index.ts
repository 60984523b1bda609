import { randomBytes } from "node:crypto";
import type { Model, MqttUser } from "../config/model.js";
import { HashCache, mosquittoHash, sha512Crypt, verifyMosquittoHash, verifySha512Crypt, wpaPsk } from "./hashes.js";
import { ensurePki, type Pki } from "./pki.js";
import { nodeRedMqttUser, prepareNodeRed, type NodeRedSecrets } from "./node-red.js";
import { StateDir } from "./state.js";

export { StateDir } from "./state.js";

/** What the render needs from the secrets step: certificates and hashes, never clear-text passwords (but the ddclient token, which has no hashed form). */
export interface Secrets {
  pki: Pki;
  /** Every MQTT user: the config's, then those pibake adds (Node-RED's, when the config names none). */
  mqttUsers: MqttUser[];
  /** Mosquitto `$7$` hashes by MQTT user name. */
  mqttHashes: Map<string, string>;
  /** crypt(3) hash of the first user's password. */
  userPasswordHash: string;
  /** Wi-Fi PSK (64 hex digits) derived from passphrase and SSID. */
  wifiPsk?: string;
  /** A random password that pi-gen sets before stage-pibake replaces it; kept so that renders repeat. */
  piGenFirstUserPlaceholder: string;
  /** Absent when Node-RED is off. */
  nodeRed?: NodeRedSecrets;
}

/**
 * The secrets of a build, from the model and the state directory alone: no
 * network, and the model is left as it is. Node-RED's versions are those the
 * resolve step (src/registry/resolve.ts) recorded before.
 */
export async function prepareSecrets(model: Model, state: StateDir): Promise<Secrets> {
  state.ensure();
  // A first render's keys are made in Node's thread pool (ensurePki) while this thread makes the password hashes.
  const [pki, hashed] = await Promise.all([
    ensurePki(state, model.image.name, { commonName: model.tls.domain, dnsNames: model.tls.dnsNames, ipAddresses: model.tls.ipAddresses }),
    (async () => hashPasswords(model, state))(),
  ]);
  return { pki, ...hashed };
}

/** Everything of Secrets but the certificates: the hashes (made once, then reused from the state directory) and the generated values. */
function hashPasswords(model: Model, state: StateDir): Omit<Secrets, "pki"> {
  const cache = new HashCache(state);
  const nodeRed = prepareNodeRed(model, state, cache);
  const nodeRedUser = nodeRedMqttUser(model, state);
  const mqttUsers = [...model.mqtt.users, ...(nodeRedUser ? [nodeRedUser] : [])];
  const mqttHashes = new Map(mqttUsers.map((u) => [u.name, cache.get(`mqtt:${u.name}`, u.password.reveal(), (pw) => mosquittoHash(pw), verifyMosquittoHash)]));
  const userPasswordHash = cache.get(`user:${model.user.name}`, model.user.password.reveal(), (pw) => sha512Crypt(pw), verifySha512Crypt);
  cache.save();
  let placeholder = state.read("pi-gen-first-user-placeholder");
  if (!placeholder) {
    placeholder = randomBytes(18).toString("base64url");
    state.write("pi-gen-first-user-placeholder", placeholder);
  }
  return {
    mqttUsers,
    mqttHashes,
    userPasswordHash,
    ...(model.network.wifi ? { wifiPsk: wpaPsk(model.network.wifi.passphrase.reveal(), model.network.wifi.ssid) } : {}),
    piGenFirstUserPlaceholder: placeholder.trim(),
    ...(nodeRed ? { nodeRed } : {}),
  };
}
