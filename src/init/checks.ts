/**
 * Each answer checked as it is given, by the config's own rules (its schema's
 * fields and the secrets' checks in src/config/), so that a question is asked
 * again at once rather than the whole config refused at the end.
 */
import type { z } from "zod";
import { configSchema, IPV4_RE } from "../config/schema.js";
import { freemyipToken, wpaPassphrase } from "../config/load.js";
import { reservedAddress, subnetOf } from "../config/rules.js";
import { sshKeyProblem } from "../config/ssh-key.js";
import { keymapProblem, localeProblem, timezoneProblem } from "../config/lists.js";
import { RELEASE } from "./plan.js";

/** A problem in words, or undefined when the answer is fine. */
export type Check = (value: string) => string | undefined;

const shape = configSchema.shape;

function field(schema: z.ZodType): Check {
  return (value) => {
    const r = schema.safeParse(value);
    return r.success ? undefined : `${JSON.stringify(value)} ${r.error.issues[0]?.message ?? "is not valid"}`;
  };
}

const all =
  (...checks: Check[]): Check =>
  (v) => {
    for (const c of checks) {
      const p = c(v);
      if (p) return p;
    }
    return undefined;
  };

const secret =
  (problem: (v: string) => string | undefined): Check =>
  (v) => {
    const p = /[\r\n\u0000]/.test(v) ? "contains a line break or NUL character" : problem(v);
    return p ? `the value ${p}` : undefined;
  };

export const checkDomain: Check = all(field(shape.tls.shape.domain), (v) =>
  v.toLowerCase().endsWith(".freemyip.com") ? undefined : `"${v}" is not a name under freemyip.com, which freemyip updates (e.g. home.freemyip.com)`,
);
export const checkToken: Check = secret(freemyipToken);
export const checkAddress: Check = (v) => {
  const p = field(shape.network.shape.address)(v);
  if (p) return p;
  const [ip, prefixText] = v.split("/") as [string, string];
  const prefix = Number(prefixText);
  if (prefix < 8) return `"${v}" has a prefix length of ${prefix}; a home network has 8 to 32`;
  const reserved = reservedAddress(ip, prefix);
  return reserved ? `"${v}" is the ${reserved} address of ${subnetOf(ip, prefix)}, not a host address` : undefined;
};
/** The router: in the Pi's subnet, and not the Pi itself. */
export function checkGateway(address: string): Check {
  return (v) => {
    if (!IPV4_RE.test(v)) return `"${v}" is not an IPv4 address`;
    const [ip, prefixText] = address.split("/") as [string, string];
    const prefix = Number(prefixText);
    if (v === ip) return `${v} is the Pi's own address: give the router's`;
    if (subnetOf(v, prefix) !== subnetOf(ip, prefix)) return `${v} is outside ${subnetOf(ip, prefix)} (the Pi's address)`;
    return reservedAddress(v, prefix) ? `${v} is the network or broadcast address of ${subnetOf(ip, prefix)}, not a router's` : undefined;
  };
}
export const checkUserName: Check = field(shape.user.shape.name);
export const checkPassword: Check = secret((v) => (v.length < 8 ? "is shorter than 8 characters" : undefined));
export const checkMqttName: Check = field(shape.mqtt.shape.users.element.shape.name);
export const checkSsid: Check = field(shape.network.shape.wifi.unwrap().shape.ssid);
export const checkPassphrase: Check = secret(wpaPassphrase);
export const checkCountry: Check = field(shape.network.shape.wifi.unwrap().shape.country);
export const checkTimezone: Check = (v) => (timezoneProblem(v, RELEASE) ? `"${v}" ${timezoneProblem(v, RELEASE)}` : undefined);
export const checkLocale: Check = (v) => (localeProblem(v, RELEASE) ? `"${v}" ${localeProblem(v, RELEASE)}` : undefined);
export const checkKeymap: Check = (v) => (keymapProblem(v, RELEASE) ? `"${v}" ${keymapProblem(v, RELEASE)}` : undefined);
/** The first line of a .pub file, as user.sshKeys takes it. */
export const checkSshKey: Check = (v) => field(shape.user.shape.sshKeys.unwrap().element)(v) ?? (sshKeyProblem(v) ? `the key ${sshKeyProblem(v)}` : undefined);
