import type { Model } from "../config/model.js";
import { SSH_PORT } from "../config/rules.js";

/** One port the firewall opens, and why: the ruleset and docs/security.md say the reason. */
export interface OpenPort {
  port: number;
  protocol: "tcp" | "udp";
  reason: string;
  /**
   * fail2ban's mosquitto jail watches this port (when it is Internet-open): a Mosquitto listener of
   * MQTT over TCP, whose "New connection from ADDR:PORT on port P." line names the client. Not a
   * websockets listener: for those mosquitto (2.0.21) logs no address at all, only "Client ID
   * closed its connection.", so only the limit on new connections guards them.
   */
  fail2ban: boolean;
}

export interface FirewallPorts {
  /** Open to every address, for the router's port forwarding; new connections are rate-limited per source. */
  internet: OpenPort[];
  /** Open to firewall.lan, IPv6 link-local and unique-local sources, and loopback. */
  lan: OpenPort[];
}

/**
 * Every port the Pi's firewall opens. Another listener is one line here: the
 * ruleset, the rate limit and the fail2ban jail all follow this list.
 */
export function firewallPorts(model: Model): FirewallPorts {
  const tcp = (port: number, reason: string, fail2ban = false): OpenPort => ({ port, protocol: "tcp", reason, fail2ban });
  const ws = model.mqtt.websockets;
  return {
    internet: [
      tcp(model.mqtt.tlsPort, "MQTT over TLS (mqtt.tlsPort), forwarded by the router", true),
      ...(ws ? [tcp(ws.tlsPort, "MQTT over WebSockets with TLS (mqtt.websockets.tlsPort), for browsers, forwarded by the router")] : []),
    ],
    lan: [
      tcp(model.mqtt.lanPort, "plain MQTT (mqtt.lanPort)", true),
      ...(ws?.lanPort !== undefined ? [tcp(ws.lanPort, "plain MQTT over WebSockets (mqtt.websockets.lanPort)")] : []),
      tcp(SSH_PORT, "SSH"),
      ...(model.nodeRed ? [tcp(model.nodeRed.port, "Node-RED's editor and dashboard (nodeRed.port)")] : []),
      { port: 5353, protocol: "udp", reason: "mDNS: <hostname>.local answers on the home network", fail2ban: false },
    ],
  };
}

/**
 * New connections per source address to the Internet-open ports: a burst of
 * 20, then 10 a minute. A home broker's clients connect once and stay (a phone
 * that changes networks reconnects a few times an hour; a remote site's
 * devices starting at once after a power cut make a burst), so no legitimate
 * client meets the limit, while one address can try at most 10 passwords a
 * minute (mosquitto closes the connection after a failed login). fail2ban
 * then bans it after 5 failures (FAIL2BAN below).
 */
export const NEW_CONNECTION_LIMIT = { perMinute: 10, burst: 20 } as const;

/**
 * fail2ban's numbers. 5 failed logins within 10 minutes ban the address for
 * an hour, doubled for each ban that follows (bantime.increment) up to a week:
 * 25 guesses on the first day (5 at the start and 5 after each of the bans of
 * 1, 2, 4 and 8 hours), 5 on each of the next two, then fewer, down to 5 a
 * week, instead of the 14,400 a day the rate limit alone would allow. 5 failures leave room for a user's typos; the LAN
 * is never banned (ignoreip).
 */
export const FAIL2BAN = { maxRetry: 5, findTime: "10m", banTime: "1h", banTimeMax: "1w" } as const;

/** IPv6 sources that count as the home network: link-local (never routed) and unique-local (RFC 4193: not routed to or from the Internet). */
export const LAN6 = ["fe80::/10", "fc00::/7"] as const;

export interface FirewallView {
  lan4: string;
  lan6: string;
  internet: { list: string; rules: OpenPort[] };
  lanTcp: { list: string; rules: OpenPort[] };
  lanUdp: { list: string; rules: OpenPort[] };
  /** Every TCP port the home network may reach: its own and the Internet-open ones. */
  homeTcpList: string;
  limit: { perMinute: number; burst: number };
  fail2ban: {
    ignoreIp: string;
    maxRetry: number;
    findTime: string;
    banTime: string;
    banTimeMax: string;
    /** The Internet-open Mosquitto listeners: `8883` or `8883|8884`, for the filter's regex, and `8883,8884` for the jail. */
    mqttPortsRegex: string;
    mqttPorts: string;
  };
}

export function firewallView(model: Model): FirewallView | false {
  if (!model.firewall) return false;
  const { internet, lan } = firewallPorts(model);
  const set = (rules: OpenPort[]) => ({ list: rules.map((r) => r.port).join(", "), rules });
  const mqtt = internet.filter((p) => p.fail2ban && p.protocol === "tcp").map((p) => p.port);
  return {
    lan4: model.firewall.lan.join(", "),
    lan6: LAN6.join(", "),
    internet: set(internet),
    lanTcp: set(lan.filter((p) => p.protocol === "tcp")),
    lanUdp: set(lan.filter((p) => p.protocol === "udp")),
    homeTcpList: [...lan, ...internet]
      .filter((p) => p.protocol === "tcp")
      .map((p) => p.port)
      .join(", "),
    limit: { ...NEW_CONNECTION_LIMIT },
    fail2ban: {
      ignoreIp: ["127.0.0.0/8", "::1", ...LAN6, ...model.firewall.lan].join(" "),
      maxRetry: FAIL2BAN.maxRetry,
      findTime: FAIL2BAN.findTime,
      banTime: FAIL2BAN.banTime,
      banTimeMax: FAIL2BAN.banTimeMax,
      mqttPortsRegex: mqtt.join("|"),
      mqttPorts: mqtt.join(","),
    },
  };
}
