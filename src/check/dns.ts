import { Resolver } from "node:dns/promises";
import { isIP } from "node:net";
import type { Ddns } from "../config/model.js";
import { failed, ok, warning, type Budget, type CheckResult } from "./result.js";
import { describe, within } from "./net.js";

/** A resolver that asks one given server (IP or IP:PORT) when there is one, the system's otherwise, once, bounded. */
export function makeResolver(ms: number, server: string | undefined): Resolver {
  const r = new Resolver({ timeout: ms, tries: 1 });
  if (server) r.setServers([server]);
  return r;
}

/** Every IPv4 and IPv6 address of a name; throws the first error when it has none. */
export async function resolveAll(resolver: Resolver, name: string, ms: number): Promise<string[]> {
  const work = Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  const [v4, v6] = await within(`resolving ${name}`, ms, work, () => resolver.cancel());
  const addresses = [...(v4.status === "fulfilled" ? v4.value : []), ...(v6.status === "fulfilled" ? v6.value : [])];
  if (addresses.length) return addresses;
  // NXDOMAIN answers both queries alike; a name with no A but other records reports ENODATA.
  throw v4.status === "rejected" ? v4.reason : (v6 as PromiseRejectedResult).reason;
}

function dnsReason(err: unknown): string {
  const code = String((err as NodeJS.ErrnoException)?.code ?? "");
  if (code === "ENOTFOUND") return "the name does not exist (NXDOMAIN)";
  if (code === "ENODATA") return "the name has no address records";
  if (code === "ETIMEOUT" || code === "ETIMEDOUT") return `no answer from the DNS server (${describe(err)})`;
  if (code === "ECONNREFUSED") return `the DNS server refused the query (${describe(err)})`;
  return describe(err);
}

/** The first IP address in a lookup service's answer (plain text like ipify's, or any text holding one). */
export function addressIn(body: string): string | undefined {
  const text = body.trim();
  if (isIP(text)) return text;
  const v4 = text.match(/\b(?:\d{1,3}\.){3}\d{1,3}\b/)?.[0];
  if (v4 && isIP(v4)) return v4;
  const v6 = text.match(/[0-9A-Fa-f:]*:[0-9A-Fa-f:]+/g)?.find((c) => isIP(c) === 6);
  return v6;
}

/** Asked directly, never through HTTP(S)_PROXY: a proxy would report its own address, not the home's (ddclient on the Pi asks directly too). */
async function wanAddress(url: string, ms: number): Promise<string> {
  const res = await within(`GET ${url}`, ms, fetch(url, { signal: AbortSignal.timeout(ms), redirect: "follow" }));
  if (!res.ok) throw new Error(`${url} answered HTTP ${res.status}`);
  const body = await within(`reading ${url}`, ms, res.text());
  const ip = addressIn(body);
  if (!ip) throw new Error(`${url} answered without an IP address (${JSON.stringify(body.slice(0, 60))})`);
  return ip;
}

/**
 * What the domain resolves to, against the WAN address the config's lookup
 * service reports from here (ddclient on the Pi asks the same service).
 */
export async function checkDns(domain: string, ddns: Ddns | undefined, dnsServer: string | undefined, budget: Budget): Promise<CheckResult[]> {
  const from = dnsServer ? ` (asked ${dnsServer})` : "";
  let addresses: string[];
  const lookup = ddns
    ? wanAddress(ddns.ipLookup, budget.ms).then(
        (ip) => ({ ip }),
        (error: unknown) => ({ error }),
      )
    : undefined;
  try {
    addresses = await resolveAll(makeResolver(budget.ms, dnsServer), domain, budget.ms);
  } catch (err) {
    return [
      failed(
        "dns",
        `${domain} does not resolve${from}: ${dnsReason(err)}`,
        ddns
          ? `ddclient on the Pi registers ${domain} with ${ddns.provider}: check its log (journalctl -u ddclient) and the account at the provider`
          : `register ${domain} with your DNS provider, or check from home with --lan`,
      ),
    ];
  }
  const results = [ok("dns", `${domain} resolves to ${addresses.join(", ")}${from}`)];
  if (!ddns || !lookup) return results;
  const wan = await lookup;
  if ("error" in wan)
    results.push(
      warning(
        "wan address",
        `could not learn this network's WAN address from ${ddns.ipLookup}: ${describe(wan.error)}`,
        "check ddns.ipLookup, or this machine's Internet access",
      ),
    );
  else if (addresses.includes(wan.ip)) results.push(ok("wan address", `${wan.ip}, as ${ddns.ipLookup} reports from here, is what ${domain} resolves to`));
  else
    results.push(
      warning(
        "wan address",
        `${domain} resolves to ${addresses.join(", ")}, but ${ddns.ipLookup} reports ${wan.ip} from here`,
        `if this machine is on the Pi's home network, ddclient on the Pi has not updated the name yet (it checks every ${ddns.interval} s): see journalctl -u ddclient on the Pi; from another network the difference is expected`,
      ),
    );
  return results;
}
