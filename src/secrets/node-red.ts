import { createRequire } from "node:module";
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, scryptSync, timingSafeEqual } from "node:crypto";
import { Secret, type Model, type MqttUser } from "../config/model.js";
import { nodeRedVersionRequest, recordedNodeRedVersions, type NodeRedVersions } from "../registry/node-red.js";
import type { HashCache } from "./hashes.js";
import type { StateDir } from "./state.js";

/**
 * Node-RED's secrets: the editor login as a bcrypt hash, a credentialSecret
 * made once, and the MQTT password in flows_cred.json encrypted the way
 * Node-RED encrypts credentials. Generated values live in the state
 * directory (0600) so that every render of the same config repeats.
 */

export const STATE_FILES = {
  adminPassword: "node-red-admin-password",
  credentialSecret: "node-red-credential-secret",
  mqttPassword: "node-red-mqtt-password",
} as const;

export interface NodeRedSecrets {
  versions: NodeRedVersions;
  /** bcrypt hash of the editor password, for settings.js adminAuth. */
  adminHash: string;
  /** The state file holding the generated editor password, when the config gives none. */
  adminPasswordFile?: string;
  /** scrypt hash of the same password, checked by the dashboard's socket guard (protectDashboard only). */
  dashboardHash?: string;
  /** Node-RED's credentialSecret: the key of flows_cred.json. */
  credentialSecret: string;
}

/** bcrypt cost: Node-RED checks it at each login, on a Pi, possibly in plain JavaScript (bcryptjs). */
const BCRYPT_COST = 10;

/** bcryptjs, loaded when a hash is made or checked: a render that repeats needs neither. */
let bcryptLoaded: typeof import("bcryptjs") | undefined;
const bcrypt = () => (bcryptLoaded ??= createRequire(import.meta.url)("bcryptjs") as typeof import("bcryptjs"));

export function bcryptHash(password: string): string {
  return bcrypt().hashSync(password, BCRYPT_COST);
}

export function verifyBcrypt(password: string, hash: string): boolean {
  try {
    return bcrypt().compareSync(password, hash);
  } catch {
    return false;
  }
}

const SCRYPT = { N: 16384, r: 8, p: 1 } as const;

/** `scrypt$N$r$p$salt$hash` (base64): what settings.js checks with Node's own crypto, needing no module. */
export function scryptHash(password: string, salt: Buffer = randomBytes(16)): string {
  const hash = scryptSync(password, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString("base64")}$${hash.toString("base64")}`;
}

export function verifyScrypt(password: string, encoded: string): boolean {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(encoded);
  if (!m) return false;
  const expected = Buffer.from(m[5]!, "base64");
  const actual = scryptSync(password, Buffer.from(m[4]!, "base64"), expected.length, { N: Number(m[1]), r: Number(m[2]), p: Number(m[3]) });
  return timingSafeEqual(actual, expected);
}

/**
 * Node-RED's credential encryption: AES-256-CTR keyed by SHA-256 of
 * credentialSecret, stored as `{"$": hex(iv) + base64(ciphertext)}` of the
 * JSON of all credentials. Node-RED takes a random IV; here it is derived
 * from key and plain text (HMAC), so that a render repeats byte for byte and
 * two different plain texts still never share an IV.
 */
export function encryptCredentials(credentialSecret: string, credentials: Record<string, unknown>): string {
  const key = createHash("sha256").update(credentialSecret).digest();
  const plain = JSON.stringify(credentials);
  const iv = createHmac("sha256", key).update(plain).digest().subarray(0, 16);
  const cipher = createCipheriv("aes-256-ctr", key, iv);
  return iv.toString("hex") + cipher.update(plain, "utf8", "base64") + cipher.final("base64");
}

/** The inverse, as Node-RED's runtime does it (tests and `pibake` diagnostics). */
export function decryptCredentials(credentialSecret: string, encrypted: string): Record<string, unknown> {
  const key = createHash("sha256").update(credentialSecret).digest();
  const decipher = createDecipheriv("aes-256-ctr", key, Buffer.from(encrypted.slice(0, 32), "hex"));
  return JSON.parse(decipher.update(encrypted.slice(32), "base64", "utf8") + decipher.final("utf8")) as Record<string, unknown>;
}

/** A value made once and then read from the state directory. */
function kept(state: StateDir, name: string, make: () => string): string {
  const existing = state.read(name)?.trim();
  if (existing) return existing;
  const value = make();
  state.write(name, value + "\n");
  return value;
}

/**
 * The MQTT user that Node-RED logs in as, when the config names none: made
 * here (password generated once and kept, allowed to read the example
 * topic), so that the broker's password and ACL files carry it like any
 * other user.
 */
export function nodeRedMqttUser(model: Model, state: StateDir): MqttUser | undefined {
  const nr = model.nodeRed;
  if (!nr || !nr.mqttUserGenerated || model.mqtt.users.some((u) => u.name === nr.mqttUser)) return undefined;
  const password = kept(state, STATE_FILES.mqttPassword, () => randomBytes(24).toString("base64url"));
  return {
    name: nr.mqttUser,
    password: new Secret(password, `generated, ${STATE_FILES.mqttPassword}`),
    topics: [{ access: "read", topic: nr.exampleTopic }],
  };
}

/** Node-RED's secrets, and the versions that the last resolve recorded (or the fallback). */
export function prepareNodeRed(model: Model, state: StateDir, cache: HashCache): NodeRedSecrets | undefined {
  const nr = model.nodeRed;
  const request = nodeRedVersionRequest(model);
  if (!nr || !request) return undefined;
  const adminPassword =
    nr.admin.password?.reveal() ??
    new Secret(
      kept(state, STATE_FILES.adminPassword, () => randomBytes(15).toString("base64url")),
      `generated, ${STATE_FILES.adminPassword}`,
    ).reveal();
  const credentialSecret = kept(state, STATE_FILES.credentialSecret, () => randomBytes(32).toString("hex"));
  const user = nr.admin.user;
  return {
    versions: recordedNodeRedVersions(state, request),
    adminHash: cache.get(`node-red-admin:${user}`, adminPassword, bcryptHash, verifyBcrypt),
    ...(nr.admin.password ? {} : { adminPasswordFile: state.file(STATE_FILES.adminPassword) }),
    ...(nr.protectDashboard ? { dashboardHash: cache.get(`node-red-dashboard:${user}`, adminPassword, (pw) => scryptHash(pw), verifyScrypt) } : {}),
    credentialSecret,
  };
}
