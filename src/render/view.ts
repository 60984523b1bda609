import { createHash } from "node:crypto";
import type { Model, TopicRule } from "../config/model.js";
import type { Secrets } from "../secrets/index.js";
import { nodeRedView, type NodeRedView } from "./node-red.js";
import { firewallView, type FirewallView } from "./firewall.js";
import { configDigest } from "../config/digest.js";
import { PIBAKE_VERSION } from "../version.js";
import { systemSettings, type SystemSettings } from "./system.js";

/**
 * The values templates see. Optional parts are `false` rather than missing,
 * because templates are compiled strictly and a missing field is an error.
 */
export interface View {
  /** What pi-gen's config does to the system: the pi-gen config file is rendered from it. */
  system: SystemSettings;
  image: Model["image"];
  user: { name: string; passwordHash: string; passwordSsh: boolean };
  network: {
    interface: string;
    address: string;
    prefix: number;
    gateway: string;
    /** NetworkManager wants `;` between servers; it drops a comma-separated list silently. */
    dnsList: string;
    lan: { uuid: string; type: "ethernet" | "wifi"; wifi: boolean };
    /** ssidKeyfile: the SSID as a NetworkManager keyfile value (see keyfileSsid). */
    wifi: false | { ssid: string; ssidKeyfile: string; psk: string; country: string; uuid: string; separateProfile: boolean };
  };
  mqtt: {
    lanPort: number;
    tlsPort: number;
    persistence: boolean;
    autosaveInterval: number;
    websockets: false | { tlsPort: number; lanPort: number | false };
    aclFile: boolean;
    users: { name: string; hash: string; topics: TopicRule[] }[];
  };
  tls: {
    domain: string;
    serverCertPem: string;
    serverKeyPem: string;
    caCertPem: string;
    /** What the TLS listeners serve: the own CA's pair, or with ACME the pair the renewal installs (the own CA's until the first public one). */
    certFile: string;
    keyFile: string;
    /** challengeName: the one name whose TXT record the DNS-01 hook may set. */
    acme: false | { email: string; server: string; challengeName: string };
  };
  ddns: false | { freemyip: boolean; hostname: string; interval: number; ipLookup: string; server: string; login: string; secret: string };
  piGen: { firstUserPlaceholder: string; sshKeys: string; pubkeyOnly: "0" | "1"; stageList: string };
  nodeRed: false | NodeRedView;
  updates: false | { reboot: false | { time: string } };
  /** The nftables ruleset and fail2ban's jails; false when firewall.enabled is false. */
  firewall: false | FirewallView;
  /** What the status report on the boot partition says of the build. */
  status: { version: string; configDigest: string };
}

/** A stable UUID (RFC 4122 layout, name-based) so that renders repeat byte for byte. */
export function stableUuid(...parts: string[]): string {
  const h = createHash("sha1").update(parts.join("\u0000")).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/**
 * An SSID as a NetworkManager keyfile value. GLib key files read `\` as an
 * escape and drop leading and trailing blanks, and NetworkManager reads a value
 * of digits and `;` as a list of bytes: such SSIDs (and any with control
 * characters) are written as that list of bytes, `72;111;...;`, the form
 * NetworkManager itself writes for them; every other SSID as it is.
 */
export function keyfileSsid(ssid: string): string {
  const plain = !/[\\\u0000-\u001f\u007f]/.test(ssid) && ssid === ssid.trim() && !/^[\d;\s]*$/.test(ssid);
  return plain ? ssid : [...Buffer.from(ssid, "utf8")].map((b) => `${b};`).join("");
}

/** The pair the TLS listeners serve. With ACME it is not an overlay file, so a push or a new render leaves the public certificate alone. */
const OWN_CA_SERVED = { certFile: "/etc/mosquitto/certs/server.crt", keyFile: "/etc/mosquitto/certs/server.key" };
const ACME_SERVED = { certFile: "/etc/mosquitto/certs/public.crt", keyFile: "/etc/mosquitto/certs/public.key" };

export const DEFAULT_STAGE_LIST = "stage0 stage1 stage2 stage-pibake";

export function buildView(model: Model, secrets: Secrets): View {
  return {
    system: systemSettings(model),
    image: model.image,
    user: { name: model.user.name, passwordHash: secrets.userPasswordHash, passwordSsh: model.user.passwordSsh },
    network: networkView(model, secrets),
    mqtt: mqttView(model, secrets),
    tls: tlsView(model, secrets),
    ddns: ddnsView(model),
    piGen: {
      firstUserPlaceholder: secrets.piGenFirstUserPlaceholder,
      sshKeys: model.user.sshKeys.join("\n"),
      pubkeyOnly: model.user.passwordSsh ? "0" : "1",
      stageList: DEFAULT_STAGE_LIST,
    },
    nodeRed: nodeRedView(model, secrets),
    updates: model.updates ? { reboot: model.updates.rebootTime ? { time: model.updates.rebootTime } : false } : false,
    firewall: firewallView(model),
    status: { version: PIBAKE_VERSION, configDigest: configDigest(model) },
  };
}

/** The static address's connection, and a Wi-Fi profile of its own when the static address is on the cable. */
function networkView(model: Model, secrets: Secrets): View["network"] {
  const wifiIsLan = model.network.interface.startsWith("wlan");
  const wifi = model.network.wifi;
  return {
    interface: model.network.interface,
    address: model.network.address,
    prefix: model.network.prefix,
    gateway: model.network.gateway,
    dnsList: model.network.dns.map((d) => `${d};`).join(""),
    lan: { uuid: stableUuid(model.image.name, "lan", model.network.interface), type: wifiIsLan ? "wifi" : "ethernet", wifi: wifiIsLan },
    wifi: wifi
      ? {
          ssid: wifi.ssid,
          ssidKeyfile: keyfileSsid(wifi.ssid),
          psk: secrets.wifiPsk!,
          country: wifi.country,
          uuid: stableUuid(model.image.name, "wifi", wifi.ssid),
          separateProfile: !wifiIsLan,
        }
      : false,
  };
}

function mqttView(model: Model, secrets: Secrets): View["mqtt"] {
  return {
    lanPort: model.mqtt.lanPort,
    tlsPort: model.mqtt.tlsPort,
    persistence: model.mqtt.persistence,
    autosaveInterval: model.mqtt.autosaveInterval,
    websockets: model.mqtt.websockets ? { tlsPort: model.mqtt.websockets.tlsPort, lanPort: model.mqtt.websockets.lanPort ?? false } : false,
    aclFile: secrets.mqttUsers.some((u) => u.topics !== undefined),
    users: secrets.mqttUsers.map((u) => ({
      name: u.name,
      hash: secrets.mqttHashes.get(u.name)!,
      // Without rules of its own a user may use every topic, also when others have rules.
      topics: u.topics ?? [{ access: "readwrite", topic: "#" }],
    })),
  };
}

/** The own CA's pair, and which pair the listeners serve: the public certificate's with ACME. */
function tlsView(model: Model, secrets: Secrets): View["tls"] {
  return {
    domain: model.tls.domain,
    serverCertPem: secrets.pki.serverCertPem,
    serverKeyPem: secrets.pki.serverKeyPem,
    caCertPem: secrets.pki.caCertPem,
    ...(model.tls.acme ? ACME_SERVED : OWN_CA_SERVED),
    acme: model.tls.acme ? { ...model.tls.acme, challengeName: `_acme-challenge.${model.tls.domain}` } : false,
  };
}

/** ddclient's settings: freemyip's, or a dyndns2 server's. */
function ddnsView(model: Model): View["ddns"] {
  const ddns = model.ddns;
  if (!ddns) return false;
  return {
    freemyip: ddns.provider === "freemyip",
    hostname: ddns.hostname,
    interval: ddns.interval,
    ipLookup: ddns.ipLookup,
    server: ddns.provider === "dyndns2" ? ddns.server : "freemyip.com",
    login: ddns.provider === "dyndns2" ? ddns.login : "",
    secret: ddns.provider === "dyndns2" ? ddns.password.reveal() : ddns.token.reveal(),
  };
}
