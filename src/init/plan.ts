/**
 * pibake init's pure part: what to propose from this machine (its network,
 * time zone, language) and how the answers become a config and the secret
 * files beside it. Nothing here asks, reads the disk or writes.
 */
import { randomInt } from "node:crypto";
import path from "node:path";
import type { NetworkInterfaceInfo } from "node:os";
import { intToIp, ipToInt, subnetOf } from "../config/rules.js";
import { keymapName, keymapProblem, localeProblem, timezoneProblem } from "../config/lists.js";

/** A secret typed or generated now (written under secrets/), or a file the user already has (referenced where it is). */
export type SecretAnswer = { value: string; generated: boolean } | { file: string };

export interface Answers {
  domain: string;
  ddnsToken: SecretAnswer;
  /** With prefix length: "192.168.1.10/24". */
  address: string;
  gateway: string;
  /** eth0, or wlan0 for a Pi on Wi-Fi only. */
  interface: string;
  userName: string;
  userPassword: SecretAnswer;
  mqttUsers: { name: string; password: SecretAnswer }[];
  wifi?: { ssid: string; passphrase: SecretAnswer; country: string } | undefined;
  /** The public key line; none: SSH takes the password. */
  sshKey?: string | undefined;
  nodeRed: boolean;
  timezone: string;
  locale: string;
  keymap: string;
}

/** A secret file to write, relative to the config's directory. */
export interface SecretFile {
  file: string;
  value: string;
  /** What it is for, in the closing words ("MQTT user home"). */
  label: string;
  generated: boolean;
}

export interface InitPlan {
  config: Record<string, unknown>;
  secrets: SecretFile[];
}

export const SECRETS_DIR = "secrets";
export const RELEASE = "trixie";

/** Letters and digits only: safe in every place a password goes (mosquitto_passwd, chpasswd, a shell, a phone's keyboard). */
const ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/** 22 characters of 57 (no 0/O, 1/l/I to misread): some 128 bits. */
export function strongPassword(length = 22): string {
  let out = "";
  for (let i = 0; i < length; i++) out += ALPHABET[randomInt(ALPHABET.length)];
  return out;
}

/** The file an MQTT user's password goes to: its name made safe for a file name. */
export function mqttSecretFile(name: string): string {
  return `${SECRETS_DIR}/mqtt-${name.replace(/[^A-Za-z0-9._-]/g, "_")}.txt`;
}

/** The secret files pibake init always writes when their secret is typed or generated (checked before asking). */
export const FIXED_SECRET_FILES = {
  user: `${SECRETS_DIR}/user-password.txt`,
  ddns: `${SECRETS_DIR}/ddns-token.txt`,
  wifi: `${SECRETS_DIR}/wifi-passphrase.txt`,
};

export interface NetworkProposal {
  address: string;
  gateway: string;
  /** Where the proposal came from, to say beside the question. */
  from?: string;
}

const FALLBACK: NetworkProposal = { address: "192.168.1.10/24", gateway: "192.168.1.1" };

/**
 * The default route of /proc/net/route: its interface and gateway. The file's
 * addresses are the kernel's 32-bit numbers in hex, in host byte order (little
 * endian on every machine pibake runs on).
 */
export function defaultRoute(procNetRoute: string): { iface: string; gateway: string } | undefined {
  for (const line of procNetRoute.split("\n").slice(1)) {
    const [iface, destination, gateway, , , , , mask] = line.trim().split(/\s+/);
    if (!iface || destination !== "00000000" || mask !== "00000000" || !gateway || gateway === "00000000") continue;
    const n = parseInt(gateway, 16);
    return { iface, gateway: [0, 8, 16, 24].map((s) => (n >>> s) & 255).join(".") };
  }
  return undefined;
}

/**
 * The Pi's address in this machine's own network (the one its default route
 * leaves by): the same subnet, host .10 (or the next free of this machine and
 * the router), and the same router. 192.168.1.10/24 when nothing is known.
 */
export function proposeNetwork(interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>, procNetRoute: string): NetworkProposal {
  const route = defaultRoute(procNetRoute);
  if (!route) return FALLBACK;
  const own = (interfaces[route.iface] ?? []).find((i) => i.family === "IPv4" && !i.internal && i.cidr);
  if (!own?.cidr) return FALLBACK;
  const prefix = Number(own.cidr.split("/")[1]);
  // A /29 or smaller leaves too few hosts to guess one.
  if (!(prefix >= 8 && prefix <= 28)) return FALLBACK;
  const network = ipToInt(subnetOf(own.address, prefix).split("/")[0]!);
  const taken = new Set([own.address, route.gateway]);
  let host = network + 10;
  while (taken.has(intToIp(host))) host++;
  return { address: `${intToIp(host)}/${prefix}`, gateway: route.gateway, from: `${route.iface}, ${own.cidr}` };
}

/** Intl's zone as the tz database names it on the Pi ("UTC" is "Etc/UTC" there), when the release has it. */
export function proposeTimezone(resolved: string | undefined): string {
  const tz = resolved === "UTC" ? "Etc/UTC" : resolved;
  return tz && !timezoneProblem(tz, RELEASE) ? tz : "Etc/UTC";
}

/** This machine's locale (LANG, e.g. "de_DE.UTF-8") when the Pi can build it; else en_GB.UTF-8. */
export function proposeLocale(env: NodeJS.ProcessEnv): string {
  const lang = (env.LC_ALL || env.LANG || "").replace(/\.utf8$/i, ".UTF-8");
  return /^[a-z]{2,3}_[A-Z]{2}\.UTF-8$/.test(lang) && !localeProblem(lang, RELEASE) ? lang : "en_GB.UTF-8";
}

/** The locale's country as a keymap ("de" for de_DE, "gb" for en_GB) when xkb-data has one by that code. */
export function proposeKeymap(locale: string): string {
  const code = /^[a-z]+_([A-Z]{2})/.exec(locale)?.[1]?.toLowerCase();
  return code && !keymapProblem(code, RELEASE) ? code : "gb";
}

/** The locale's country, for Wi-Fi's regulatory domain ("GB" for en_GB.UTF-8). */
export function proposeCountry(locale: string): string {
  return /^[a-z]+_([A-Z]{2})/.exec(locale)?.[1] ?? "GB";
}

/** A secret reference for the config, and the file to write when the secret is new. */
function secretRef(answer: SecretAnswer, file: string, label: string, configDir: string, secrets: SecretFile[]): { file: string } {
  if ("file" in answer) {
    const rel = path.relative(configDir, answer.file);
    return { file: rel.startsWith("..") || path.isAbsolute(rel) ? answer.file : rel };
  }
  secrets.push({ file, value: answer.value, label, generated: answer.generated });
  return { file };
}

/** The config (with "$schema" when given) and its secret files, from the answers. */
export function planConfig(a: Answers, configPath: string, schemaRef?: string): InitPlan {
  const dir = path.dirname(path.resolve(configPath));
  const secrets: SecretFile[] = [];
  // In the order the closing words list them: the user, the MQTT users, then the rest.
  const userPassword = secretRef(a.userPassword, FIXED_SECRET_FILES.user, `user ${a.userName}`, dir, secrets);
  const used = new Set<string>();
  const mqttUsers = a.mqttUsers.map((u) => {
    // Two names that differ only in characters a file name cannot hold still get a file each.
    let file = mqttSecretFile(u.name);
    for (let n = 2; used.has(file); n++) file = mqttSecretFile(`${u.name}-${n}`);
    used.add(file);
    return { name: u.name, password: secretRef(u.password, file, `MQTT user ${u.name}`, dir, secrets) };
  });
  const config = {
    ...(schemaRef ? { $schema: schemaRef } : {}),
    image: {
      name: "mqtt-broker",
      release: RELEASE,
      arch: "arm64",
      hostname: "broker",
      timezone: a.timezone,
      locale: a.locale,
      keyboard: { keymap: a.keymap, layout: keymapName(a.keymap, RELEASE) ?? a.keymap },
    },
    user: {
      name: a.userName,
      password: userPassword,
      sshKeys: a.sshKey ? [a.sshKey] : [],
      passwordSsh: !a.sshKey,
    },
    network: {
      interface: a.interface,
      address: a.address,
      gateway: a.gateway,
      dns: [a.gateway, "9.9.9.9"],
      ...(a.wifi
        ? {
            wifi: {
              ssid: a.wifi.ssid,
              passphrase: secretRef(a.wifi.passphrase, FIXED_SECRET_FILES.wifi, "Wi-Fi passphrase", dir, secrets),
              country: a.wifi.country,
            },
          }
        : {}),
    },
    mqtt: { lanPort: 1883, tlsPort: 8883, persistence: true, users: mqttUsers },
    tls: { domain: a.domain, extraNames: [] },
    ddns: { provider: "freemyip", token: secretRef(a.ddnsToken, FIXED_SECRET_FILES.ddns, "freemyip token", dir, secrets), interval: 300 },
    nodeRed: a.nodeRed ? {} : { enabled: false },
  };
  return { config, secrets };
}

/**
 * The plan's config with each new secret as an environment reference, and
 * that environment: checkConfig can then check it, secrets included, before
 * anything is written.
 */
export function inMemory(plan: InitPlan): { config: unknown; env: Record<string, string> } {
  const env: Record<string, string> = {};
  const byFile = new Map(plan.secrets.map((s, i) => [s.file, { name: `PIBAKE_INIT_SECRET_${i}`, value: s.value }]));
  const swap = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(swap);
    if (v === null || typeof v !== "object") return v;
    const file = (v as { file?: unknown }).file;
    const hit = typeof file === "string" && Object.keys(v).length === 1 ? byFile.get(file) : undefined;
    if (hit) {
      env[hit.name] = hit.value;
      return { env: hit.name };
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, swap(x)]));
  };
  return { config: swap(plan.config), env };
}
