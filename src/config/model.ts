import { inspect } from "node:util";
import { registerSecret } from "../host/redact.js";

/**
 * A secret value resolved from the config. It never shows itself: printing,
 * logging or serialising it yields "***"; only reveal() gives the value, and
 * only code that hashes or writes it should call that.
 */
export class Secret {
  readonly #value: string;
  /** Where it came from, for messages: "literal", "env FOO" or "file path". */
  readonly origin: string;
  /** The absolute path of the file it was read from, if any: outputs must never replace it. */
  readonly sourceFile: string | undefined;
  constructor(value: string, origin: string, sourceFile?: string) {
    this.#value = value;
    this.origin = origin;
    this.sourceFile = sourceFile;
    registerSecret(value);
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return "***";
  }
  toJSON(): string {
    return "***";
  }
  [inspect.custom](): string {
    return `Secret(${this.origin})`;
  }
}

/** The releases and architectures pibake builds for: the config's schema, its lists (data/RELEASE/) and `images fetch` take them from here. */
export const RELEASES = ["trixie", "bookworm"] as const;
export const ARCHES = ["arm64", "armhf"] as const;
export type Release = (typeof RELEASES)[number];
export type Arch = (typeof ARCHES)[number];
export type Access = "read" | "write" | "readwrite";

export interface TopicRule {
  access: Access;
  topic: string;
}

export interface MqttUser {
  name: string;
  password: Secret;
  /** Absent: the user may use every topic. */
  topics?: TopicRule[];
}

export type Ddns =
  | { provider: "freemyip"; token: Secret; hostname: string; interval: number; ipLookup: string }
  | { provider: "dyndns2"; server: string; login: string; password: Secret; hostname: string; interval: number; ipLookup: string };

/** The validated config: every default applied, every secret resolved. */
export interface Model {
  /** Absolute path of the config file and its directory (relative paths resolve from there). */
  configPath: string;
  configDir: string;
  image: {
    name: string;
    release: Release;
    arch: Arch;
    hostname: string;
    timezone: string;
    locale: string;
    keyboard: { keymap: string; layout: string };
    /** pi-gen builds: absolute stage directories that replace stage0-2; empty for pi-gen's own. */
    baseStages: string[];
    /** The official Raspberry Pi OS Lite release to build from (YYYY-MM-DD); the newest when absent. */
    raspiosDate?: string;
  };
  user: { name: string; password: Secret; sshKeys: string[]; passwordSsh: boolean };
  network: {
    interface: string;
    address: string;
    prefix: number;
    gateway: string;
    dns: string[];
    wifi?: { ssid: string; passphrase: Secret; country: string };
  };
  mqtt: {
    lanPort: number;
    tlsPort: number;
    persistence: boolean;
    /** Seconds between saves of the persistence file; only with persistence. */
    autosaveInterval: number;
    /** MQTT over WebSockets: TLS on tlsPort; plain on lanPort, present only when the config asks for it. */
    websockets?: { tlsPort: number; lanPort?: number };
    users: MqttUser[];
  };
  tls: {
    domain: string;
    /** Every DNS name the server certificate carries: domain, extra names, <hostname>.local. */
    dnsNames: string[];
    /** Every IP address it carries: the static address and extra IPs. */
    ipAddresses: string[];
    /** tls.mode "acme": the Pi obtains a public certificate for domain alone; absent: the own CA's only. */
    acme?: { email: string; server: string };
  };
  ddns?: Ddns;
  /** Absent when nodeRed.enabled is false. */
  nodeRed?: NodeRed;
  /** Unattended security updates; absent when updates.enabled is false. */
  updates?: Updates;
  /** Absent when firewall.enabled is false: no ruleset, no fail2ban jails. */
  firewall?: Firewall;
}

export interface Updates {
  /** "HH:MM": reboot at that time when an update needs it; absent: never reboot by itself. */
  rebootTime?: string;
}

/** The firewall on the Pi (src/render/firewall.ts computes its ports). */
export interface Firewall {
  /** IPv4 networks (CIDR, host bits clear) that may reach the LAN-only ports. */
  lan: string[];
}

/** Node-RED on the broker (src/config/node-red.ts). */
export interface NodeRed {
  /** "firstboot": npm installs it on the Pi's first boot; "build": into the image, in the chroot. */
  install: "firstboot" | "build";
  port: number;
  /** The editor's login; without a password in the config pibake generates one (state directory). */
  admin: { user: string; password?: Secret };
  dashboard: "flowfuse" | "classic" | "none";
  /** Basic authentication (the admin's) in front of the dashboard and HTTP endpoints. */
  protectDashboard: boolean;
  /** The MQTT user Node-RED connects as, one of mqtt.users; pibake adds it when the config names none. */
  mqttUser: string;
  /** True when pibake adds mqttUser with a generated password (kept in the state directory). */
  mqttUserGenerated: boolean;
  /** The topic filter the example flow subscribes to. */
  exampleTopic: string;
  /** An exact Node-RED version, instead of the newest that runs on the OS's Node. */
  version?: string;
}
