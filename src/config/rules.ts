import type { ConfigIssue } from "../errors.js";
import type { ParsedConfig } from "./schema.js";
import { nodeRedIssues } from "./node-red.js";
import { mqttListenerPorts } from "./ports.js";
import { keyboardLayoutProblem, keymapProblem, localeProblem, timezoneProblem } from "./lists.js";

/** The Pi's SSH server (Raspberry Pi OS's default, which pibake keeps). */
export const SSH_PORT = 22;

/** Rules that only make sense across fields; the schema has already checked each field alone. */
export function crossFieldIssues(c: ParsedConfig): ConfigIssue[] {
  return [
    ...networkIssues(c),
    ...listenerIssues(c),
    ...dependentSettingIssues(c),
    ...sshPortIssues(c),
    ...mqttUserIssues(c),
    ...sshLoginIssues(c),
    ...freemyipNameIssues(c),
    ...acmeIssues(c),
    ...nodeRedIssues(c),
    ...releaseListIssues(c),
  ];
}

/** The address, the gateway in its subnet and neither a reserved one, and Wi-Fi for a wlan interface. */
function networkIssues(c: ParsedConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const [ip, prefixText] = c.network.address.split("/") as [string, string];
  const prefix = Number(prefixText);
  const subnet = subnetOf(ip, prefix);

  if (networkOf(ipToInt(c.network.gateway), prefix) !== networkOf(ipToInt(ip), prefix)) {
    issues.push({ path: "network.gateway", message: `${c.network.gateway} is outside ${subnet} (network.address)` });
  }
  if (c.network.gateway === ip) {
    issues.push({ path: "network.gateway", message: `${c.network.gateway} is the Pi's own address (network.address): give the router's address` });
  }
  const gatewayReserved = reservedAddress(c.network.gateway, prefix);
  if (gatewayReserved)
    issues.push({
      path: "network.gateway",
      message: `${c.network.gateway} is the ${gatewayReserved} address of ${subnet}, not a router's: give the router's address (often ${intToIp(networkOf(ipToInt(ip), prefix) + 1)})`,
    });
  const addressReserved = reservedAddress(ip, prefix);
  if (addressReserved)
    issues.push({ path: "network.address", message: `"${c.network.address}" is the ${addressReserved} address of ${subnet}, not a host address` });
  if (prefix < 8) issues.push({ path: "network.address", message: `"${c.network.address}" has a prefix length of ${prefix}; a home network has 8 to 32` });
  if (c.network.interface.startsWith("wlan") && !c.network.wifi) {
    issues.push({ path: "network.wifi", message: `is required when network.interface is "${c.network.interface}": give ssid, passphrase and country` });
  }
  return issues;
}

/** A port of its own for each MQTT listener. */
function listenerIssues(c: ParsedConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const listeners = mqttListenerPorts(c);
  listeners.forEach((l, i) => {
    const earlier = listeners.slice(0, i).find((e) => e.port === l.port);
    if (earlier) issues.push({ path: l.path, message: `${l.port} is also ${earlier.path}: each listener needs a port of its own` });
  });
  return issues;
}

/** Settings that mean nothing without another: autosave without persistence, a reboot time without updates. */
function dependentSettingIssues(c: ParsedConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (c.mqtt.autosaveInterval !== undefined && !c.mqtt.persistence) {
    issues.push({
      path: "mqtt.autosaveInterval",
      message: "is set while mqtt.persistence is false: without persistence nothing is saved; remove it or set persistence to true",
    });
  }
  if (!c.updates.enabled && c.updates.reboot) {
    issues.push({
      path: "updates.reboot",
      message: "is set while updates.enabled is false: only unattended upgrades reboot the Pi; remove it or enable updates",
    });
  }
  return issues;
}

/** No service on the port the Pi's SSH server listens on. */
function sshPortIssues(c: ParsedConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  for (const [field, port] of [
    ["mqtt.lanPort", c.mqtt.lanPort],
    ["mqtt.tlsPort", c.mqtt.tlsPort],
    ...(c.nodeRed.enabled ? [["nodeRed.port", c.nodeRed.port] as const] : []),
  ] as const) {
    if (port === SSH_PORT) issues.push({ path: field, message: `${port} is SSH's port, which the Pi's SSH server listens on: choose another` });
  }
  return issues;
}

/** Each MQTT user's name once. */
function mqttUserIssues(c: ParsedConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Map<string, number>();
  c.mqtt.users.forEach((u, i) => {
    const first = seen.get(u.name);
    if (first !== undefined) issues.push({ path: `mqtt.users[${i}].name`, message: `"${u.name}" is already used by mqtt.users[${first}]` });
    else seen.set(u.name, i);
  });
  return issues;
}

/** Someone can log in over SSH: with a key, or with the password. */
function sshLoginIssues(c: ParsedConfig): ConfigIssue[] {
  if (c.user.passwordSsh || c.user.sshKeys.length > 0) return [];
  return [
    {
      path: "user.sshKeys",
      message: "is empty while user.passwordSsh is false: nobody could log in over SSH; add a public key or set passwordSsh to true",
    },
  ];
}

/** The "freemyip" provider updates only names under freemyip.com. */
function freemyipNameIssues(c: ParsedConfig): ConfigIssue[] {
  if (c.ddns?.provider !== "freemyip") return [];
  const host = (c.ddns.hostname ?? c.tls.domain).toLowerCase();
  if (host.endsWith(".freemyip.com")) return [];
  return [
    {
      path: c.ddns.hostname ? "ddns.hostname" : "tls.domain",
      message: `"${host}" is not a freemyip.com name, which the "freemyip" provider updates: use a name under freemyip.com or provider "dyndns2"`,
    },
  ];
}

/**
 * tls.mode "acme" answers the CA's DNS-01 challenge with freemyip's update API (its `txt=` sets
 * the TXT record, with the token ddclient already has); dyndns2 has no way to set a TXT record.
 * The token belongs to one freemyip name, so that name must be tls.domain.
 */
function acmeIssues(c: ParsedConfig): ConfigIssue[] {
  if (c.tls.mode !== "acme") {
    return c.tls.acme ? [{ path: "tls.acme", message: 'is set while tls.mode is "own-ca": set tls.mode to "acme" to use it, or remove it' }] : [];
  }
  const issues: ConfigIssue[] = [];
  if (!c.tls.acme)
    issues.push({
      path: "tls.acme.email",
      message: 'is required when tls.mode is "acme": the ACME account\'s contact address, e.g. { "email": "you@example.org" }',
    });
  const why = "the certificate is obtained through a DNS-01 challenge, whose TXT record pibake sets with freemyip's update API and the ddns token";
  if (c.ddns?.provider !== "freemyip") {
    const has = c.ddns ? `ddns.provider is "${c.ddns.provider}", which has no way to set a TXT record` : "there is no ddns section";
    issues.push({ path: "tls.mode", message: `"acme" needs ddns.provider "freemyip" (${has}): ${why}; keep "own-ca" with other providers` });
  } else {
    const host = (c.ddns.hostname ?? c.tls.domain).toLowerCase();
    if (host !== c.tls.domain.toLowerCase()) {
      issues.push({
        path: "tls.mode",
        message: `"acme" needs ddns.hostname to be tls.domain ("${c.tls.domain}"): ${why}, and freemyip's token belongs to "${host}" only`,
      });
    }
  }
  return issues;
}

/** The schema checked these against every release's lists; here against the image's release's. */
function releaseListIssues(c: ParsedConfig): ConfigIssue[] {
  const { release, timezone, locale, keyboard } = c.image;
  const problems: [string, string, string | undefined][] = [
    ["image.timezone", timezone, timezoneProblem(timezone, release)],
    ["image.locale", locale, localeProblem(locale, release)],
    ["image.keyboard.keymap", keyboard.keymap, keymapProblem(keyboard.keymap, release)],
    [
      "image.keyboard.layout",
      keyboard.layout,
      keymapProblem(keyboard.keymap, release) ? undefined : keyboardLayoutProblem(keyboard.keymap, keyboard.layout, release),
    ],
  ];
  return problems.flatMap(([path, value, message]) => (message ? [{ path, message: `${JSON.stringify(value)} ${message}` }] : []));
}

export function ipToInt(ip: string): number {
  return ip.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
}

/** The network an address is in, as CIDR: 192.168.1.10 with 24 is "192.168.1.0/24". */
export function subnetOf(ip: string, prefix: number): string {
  return `${intToIp(networkOf(ipToInt(ip), prefix))}/${prefix}`;
}

/** Whether an IPv4 CIDR names its network ("192.168.1.0/24"), not a host in it ("192.168.1.10/24"). */
export function isNetworkCidr(cidr: string): boolean {
  const [ip, prefix] = cidr.split("/") as [string, string];
  return subnetOf(ip, Number(prefix)) === cidr;
}

/**
 * Whether an address is its subnet's network or broadcast address, which no
 * host or router may have. A /31 or /32 has neither (RFC 3021): both of a
 * /31's addresses are hosts.
 */
export function reservedAddress(ip: string, prefix: number): "network" | "broadcast" | undefined {
  if (prefix > 30) return undefined;
  const host = ipToInt(ip) % 2 ** (32 - prefix);
  return host === 0 ? "network" : host === hostMask(prefix) ? "broadcast" : undefined;
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

function hostMask(prefix: number): number {
  return prefix >= 32 ? 0 : 2 ** (32 - prefix) - 1;
}

function networkOf(ipInt: number, prefix: number): number {
  return ipInt - (ipInt % 2 ** (32 - prefix));
}
