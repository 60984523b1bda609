import { z } from "zod";
import { isNetworkCidr } from "./rules.js";
import { keyboardLayoutProblem, keymapProblem, localeProblem, timezoneProblem } from "./lists.js";
import { sshKeyProblem } from "./ssh-key.js";
import { ARCHES, RELEASES } from "./model.js";

/**
 * The config file's shape. Messages are phrased to follow the offending value:
 * the formatter prints `path: <value> <message>`, e.g.
 * `network.address: "192.168.1.300/24" is not an IPv4 address with a prefix length`.
 * Rules that involve several fields live in validate.ts.
 */

const IPV4_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
export const IPV4_RE = new RegExp(`^${IPV4_OCTET}(\\.${IPV4_OCTET}){3}$`);
export const IPV4_CIDR_RE = new RegExp(`^${IPV4_OCTET}(\\.${IPV4_OCTET}){3}/([0-9]|[12][0-9]|3[0-2])$`);
/**
 * RFC 1123 host names, lower or upper case, at most 253 characters. The last
 * label is not all digits (RFC 1123 2.1), so "192.168.1.300" is no host name.
 */
export const DNS_NAME_RE = /^(?=.{1,253}$)(?!(.*\.)?[0-9]+$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** Dotted numbers: an address with an octet out of range, or not four of them. */
const NUMERIC_NAME_RE = /^[0-9]+(\.[0-9]+)*$/;
/** One DNS label: what a host name may be. */
const HOSTNAME_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/** pi-gen's own rule for FIRST_USER_NAME, with Linux's 32-character limit. */
const LINUX_USER_RE = /^[a-z][-a-z0-9_]{0,31}$/;
/** Mosquitto splits password file lines at ':'; the ACL file ends a name at white space. */
const MQTT_USER_RE = /^[^\s:#\u0000-\u001f\u007f]{1,64}$/u;
/** The comment may say anything but control characters, which bash (NUL) and authorized_keys (line ends) cannot hold. */
const SSH_KEY_RE =
  /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\u0000-\u001f\u007f]*)?$/u;

/**
 * Users and groups that Debian and Raspberry Pi OS already have (base-passwd,
 * systemd, the packages of a Lite image and of pibake). The first user cannot
 * be one of them: adduser refuses an existing name, and a system account has
 * no login shell or SSH access.
 */
const SYSTEM_ACCOUNTS = new Set(
  (
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats nobody nogroup " +
    "adm tty disk kmem dialout fax voice cdrom floppy tape sudo audio dip operator src shadow utmp video sasl plugdev staff users " +
    "input render netdev gpio i2c spi lpadmin bluetooth messagebus sshd avahi polkitd dnsmasq tss rtkit statd " +
    "mosquitto ntp chrony crontab ssl-cert"
  ).split(" "),
);
const isSystemAccount = (name: string) => SYSTEM_ACCOUNTS.has(name) || name.startsWith("systemd-") || name.startsWith("_");

/** A check against a real list or decoder (lists.ts, ssh-key.ts): its message, or none when the value is fine. */
const problemOf =
  (problem: (v: string) => string | undefined) =>
  (v: string, ctx: z.RefinementCtx): void => {
    const message = problem(v);
    if (message) ctx.addIssue({ code: "custom", message });
  };

const secretRef = z.union(
  [
    z.string().min(1, { error: "is empty" }),
    z.strictObject({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: "is not an environment variable name" }) }),
    z.strictObject({ file: z.string().min(1, { error: "is empty" }) }),
  ],
  { error: 'is not a secret: give a string, { "env": "VARIABLE" } or { "file": "path" }' },
);
export type SecretRef = z.infer<typeof secretRef>;

const port = (fallback: number) =>
  z.number({ error: "is not a port number" }).int({ error: "is not a whole number" }).min(1, { error: "is not a port number (1-65535)" }).max(65535, { error: "is not a port number (1-65535)" }).default(fallback);

const image = z.strictObject({
  name: z.string({ error: "is required: a short name for the image, e.g. \"mqtt-broker\"" }).regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, {
    error: "is not an image name: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
  }),
  release: z.enum(RELEASES, { error: 'is not a supported release: "trixie" or "bookworm"' }).default("trixie"),
  arch: z.enum(ARCHES, { error: 'is not a supported architecture: "arm64" or "armhf"' }).default("arm64"),
  hostname: z.string().regex(HOSTNAME_RE, { error: "is not a host name: letters, digits and '-', at most 63, not starting or ending with '-'" }).default("broker"),
  timezone: z
    .string()
    .regex(/^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/, { error: 'is not a time zone name such as "Europe/Berlin"', abort: true })
    .superRefine(problemOf(timezoneProblem))
    .default("Etc/UTC"),
  locale: z
    .string()
    .regex(/^[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?$/, { error: 'is not a locale such as "en_GB.UTF-8"', abort: true })
    .superRefine(problemOf(localeProblem))
    .default("en_GB.UTF-8"),
  keyboard: z
    .strictObject({
      keymap: z.string().regex(/^[a-z]{2,8}$/, { error: 'is not an XKB layout code such as "gb" or "de"', abort: true }).superRefine(problemOf(keymapProblem)),
      layout: z.string().regex(/^[A-Za-z0-9 ()._,-]{1,64}$/, { error: 'is not a keyboard layout name such as "English (UK)"', abort: true }),
    })
    .superRefine((k, ctx) => {
      const message = keyboardLayoutProblem(k.keymap, k.layout);
      if (message) ctx.addIssue({ code: "custom", message, path: ["layout"] });
    })
    .default({ keymap: "gb", layout: "English (UK)" }),
  /** Builds from the official image: the Raspberry Pi OS Lite release to start from (its release date); the newest when absent. */
  raspiosDate: z
    .string()
    .regex(/^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$/, { error: 'is not a release date such as "2025-12-04" (YYYY-MM-DD)' })
    .optional(),
  /** pi-gen builds only: stage directories that replace stage0-2 (relative to the config file); --base-stages overrides them. */
  baseStages: z.array(z.string().min(1, { error: "is empty: give a stage directory" }), { error: "is not a list of pi-gen stage directories" }).optional(),
});

const user = z.strictObject({
  name: z
    .string({ error: "is required: the first user's login name" })
    .regex(LINUX_USER_RE, {
      error: "is not a Linux user name: lower-case letters, digits, '-' and '_', starting with a letter, at most 32",
    })
    .refine((n) => !isSystemAccount(n), { error: "is a system account or group of Raspberry Pi OS, which cannot be the login user: choose a personal name such as \"admin\"" }),
  password: secretRef,
  sshKeys: z
    .array(z.string().regex(SSH_KEY_RE, { error: "is not an SSH public key line such as \"ssh-ed25519 AAAA… you@laptop\"", abort: true }).superRefine(problemOf(sshKeyProblem)))
    .default([]),
  passwordSsh: z.boolean({ error: "is not true or false" }).default(false),
});

const wifi = z.strictObject({
  ssid: z
    .string()
    .min(1, { error: "is empty" })
    .refine((s) => Buffer.byteLength(s) <= 32, { error: "is longer than 32 bytes, the most an SSID can be" })
    // Radios allow any byte, but no command line (nmcli, wpa_passphrase, iw) can be given a NUL.
    .refine((s) => !s.includes("\u0000"), { error: "contains a NUL character, which no Wi-Fi tool on the Pi can be given" }),
  passphrase: secretRef,
  country: z.string().regex(/^[A-Z]{2}$/, { error: 'is not a two-letter country code such as "DE" or "GB"' }),
});

const network = z.strictObject({
  interface: z.string().regex(/^[a-z][a-z0-9]{1,14}$/, { error: 'is not a network interface name such as "eth0" or "wlan0"' }).default("eth0"),
  address: z.string({ error: 'is required: the Pi\'s static address with prefix length, e.g. "192.168.1.10/24"' }).regex(IPV4_CIDR_RE, {
    error: "is not an IPv4 address with a prefix length",
  }),
  gateway: z.string({ error: "is required: the router's address" }).regex(IPV4_RE, { error: "is not an IPv4 address" }),
  dns: z.array(z.string().regex(IPV4_RE, { error: "is not an IPv4 address" })).min(1, { error: "is empty: give at least one DNS server" }).default(["9.9.9.9", "1.1.1.1"]),
  wifi: wifi.optional(),
});

const topicRule = z.strictObject({
  access: z.enum(["read", "write", "readwrite"], { error: 'is not an access kind: "read", "write" or "readwrite"' }),
  topic: z.string().refine(isTopicFilter, { error: "is not an MQTT topic filter ('#' only as the whole last level, '+' only as a whole level)" }),
});

const mqttUser = z.strictObject({
  name: z.string().regex(MQTT_USER_RE, { error: "is not an MQTT user name: 1-64 characters, no white space, ':' or '#'" }),
  password: secretRef,
  topics: z.array(topicRule).optional(),
});

/** MQTT over WebSockets, for browsers: a TLS listener, and on request a plain one for the home network. */
const websockets = z.strictObject({
  tlsPort: port(8884),
  lan: z.boolean({ error: "is not true or false" }).default(false),
  /** Used only when lan is true. */
  lanPort: port(1884),
});

const mqtt = z.strictObject({
  lanPort: port(1883),
  tlsPort: port(8883),
  persistence: z.boolean({ error: "is not true or false" }).default(true),
  /** Absent: the default in src/config/load.ts (AUTOSAVE_INTERVAL_S); only with persistence. */
  autosaveInterval: z
    .number({ error: "is not a number of seconds" })
    .int({ error: "is not a whole number of seconds" })
    .min(60, { error: "is too short: at least 60 seconds (every save rewrites the whole persistence file on the SD card)" })
    .max(86400, { error: "is longer than a day: retained messages of a whole day would be lost on a power cut" })
    .optional(),
  websockets: websockets.optional(),
  users: z.array(mqttUser).min(1, { error: "is empty: the broker allows no anonymous access, so give at least one user" }),
});

/** ACME directories of Let's Encrypt: production, and staging (untrusted certificates, higher rate limits) for trying it. */
export const LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory";
export const LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory";

const tls = z.strictObject({
  domain: z.string({ error: 'is required: the public DNS name clients use, e.g. "home.freemyip.com"' }).regex(DNS_NAME_RE, { error: "is not a valid DNS name" }).refine((s) => s.includes("."), {
    error: "is not a fully qualified DNS name (it needs a dot)",
  }),
  extraNames: z
    .array(
      z
        .string()
        .refine((s) => !NUMERIC_NAME_RE.test(s) || IPV4_RE.test(s), { error: "is not an IPv4 address (four numbers of 0-255), and all-numeric names are not DNS names" })
        .refine((s) => NUMERIC_NAME_RE.test(s) || DNS_NAME_RE.test(s), { error: "is neither a DNS name nor an IPv4 address" }),
    )
    .default([]),
  mode: z.enum(["own-ca", "acme"], { error: 'is not a TLS mode: "own-ca" or "acme"' }).default("own-ca").meta({ description: 'Who signs the TLS listeners\' certificate: "own-ca" (pibake\'s CA, clients install ca.crt) or "acme" (a publicly trusted certificate for tls.domain, obtained and renewed on the Pi through a DNS-01 challenge at freemyip)' }),
  acme: z
    .strictObject({
      email: z.string({ error: 'is required: the address the CA writes to about the account, e.g. "you@example.org"' }).regex(/^[!#-&(-?A-[\]-~]+@[!#-&(-?A-[\]-~]+\.[!#-&(-?A-[\]-~]+$/, { error: "is not an e-mail address (printable ASCII without quotes, a backslash or white space)" }).meta({ description: "The ACME account's contact address (expiry notices, policy changes)" }),
      server: z.string().regex(/^https:\/\/[!#-&(-[\]-~]+$/, { error: "is not an https URL of an ACME directory (printable ASCII, no quotes, backslash or white space)" }).default(LETS_ENCRYPT).meta({ description: `The ACME directory URL; default Let's Encrypt's production (${LETS_ENCRYPT}); try its staging (${LETS_ENCRYPT_STAGING}) first` }),
    })
    .optional()
    .meta({ description: 'With tls.mode "acme": the ACME account and CA' }),
});

const interval = z.number({ error: "is not a number of seconds" }).int({ error: "is not a whole number of seconds" }).min(60, { error: "is too short: at least 60 seconds, so that the provider does not block the Pi" }).max(86400, { error: "is longer than a day" }).default(300);
/**
 * What ddclient's config carries in single quotes (ddclientQuote in src/render/templates.ts): printable
 * ASCII but ' and \ (no escape is relied on) and '#' (ddclient cuts comments before it reads quotes).
 * White space is squeezed and ends lines; 3.11+ mangle non-ASCII (byte 0x85) on the way to curl.
 * URL: no '"' either. Login: no ':', which ends the login in HTTP Basic credentials.
 */
const DDCLIENT_URL_RE = /^https?:\/\/[!$-&(-[\]-~]+$/;
const DDCLIENT_LOGIN_RE = /^[!"$-&(-9;-[\]-~]+$/;
/** ddclient takes a line with "password" and then "=" in it for a password setting, whatever comes before. */
const NO_PASSWORD_SETTING = [(s: string) => !/password.*=/i.test(s), { error: 'contains "password" followed by "=", which ddclient would read as a password setting' }] as const;
const ipLookup = z
  .string()
  .regex(/^https?:\/\/[^/?#]/, { error: "is not an http(s) URL", abort: true })
  .regex(DDCLIENT_URL_RE, { error: "is not a URL that ddclient's config can carry: printable ASCII without white space, quotes, a backslash or '#' (percent-encode them)", abort: true })
  .refine(...NO_PASSWORD_SETTING)
  .default("https://api.ipify.org/");

const ddns = z.discriminatedUnion(
  "provider",
  [
    z.strictObject({ provider: z.literal("freemyip"), token: secretRef, interval, ipLookup, hostname: z.string().regex(DNS_NAME_RE, { error: "is not a valid DNS name" }).optional() }),
    z.strictObject({
      provider: z.literal("dyndns2"),
      // ddclient drops a server without a dot as invalid and sends the login to members.dyndns.org instead.
      server: z.string().regex(DNS_NAME_RE, { error: "is not a host name", abort: true }).refine((s) => s.includes("."), { error: "is not a fully qualified host name (it needs a dot; ddclient would use members.dyndns.org instead)" }),
      login: z
        .string()
        .regex(DDCLIENT_LOGIN_RE, {
          error: "is not a login name that ddclient's config can carry: printable ASCII without white space, a single quote, a backslash, '#' or ':' (':' would end the login in HTTP Basic auth)",
          abort: true,
        })
        .refine(...NO_PASSWORD_SETTING),
      password: secretRef,
      interval,
      ipLookup,
      hostname: z.string().regex(DNS_NAME_RE, { error: "is not a valid DNS name" }).optional(),
    }),
  ],
  { error: 'is not a DDNS provider: "freemyip" or "dyndns2"' },
);

/** Node-RED on the broker (src/config/node-red.ts has its cross-field rules). On unless `enabled` is false. */
const nodeRed = z
  .strictObject({
    enabled: z.boolean({ error: "is not true or false" }).default(true),
    install: z.enum(["firstboot", "build"], { error: 'is not an install time: "firstboot" (from the registry on first boot) or "build" (into the image)' }).default("firstboot"),
    port: port(1880),
    admin: z
      .strictObject({
        user: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, { error: "is not a user name: 1-64 letters, digits, '.', '_', '@' or '-'" }).default("admin"),
        // Absent: pibake generates one and keeps it in the state directory.
        password: secretRef.optional(),
      })
      .prefault({}),
    dashboard: z.enum(["flowfuse", "classic", "none"], { error: 'is not a dashboard: "flowfuse", "classic" or "none"' }).default("flowfuse"),
    protectDashboard: z.boolean({ error: "is not true or false" }).default(false),
    mqttUser: z.string().regex(MQTT_USER_RE, { error: "is not an MQTT user name: 1-64 characters, no white space, ':' or '#'" }).optional(),
    exampleTopic: z.string().refine(isTopicFilter, { error: "is not an MQTT topic filter ('#' only as the whole last level, '+' only as a whole level)" }).default("home/example"),
    version: z.string().regex(/^\d+\.\d+\.\d+$/, { error: 'is not an exact Node-RED version such as "4.1.15"' }).optional(),
  })
  .prefault({});

/** Debian's unattended-upgrades: security updates installed every day, unless `enabled` is false. */
const updates = z
  .strictObject({
    enabled: z.boolean({ error: "is not true or false" }).default(true),
    /** Absent: never reboot by itself (a kernel or libc update then waits for a reboot by hand). */
    reboot: z
      .strictObject({
        time: z.string({ error: 'is required: the time of day to reboot at when an update needs it, e.g. "04:00"' }).regex(/^([01][0-9]|2[0-3]):[0-5][0-9]$/, {
          error: 'is not a time of day as HH:MM (24-hour clock, two digits each), e.g. "04:00"',
        }),
      })
      .optional(),
  })
  .prefault({});

/**
 * The firewall on the Pi (src/render/firewall.ts). `lan`: the IPv4 networks that may reach the LAN-only
 * ports (plain MQTT, SSH, Node-RED); default: the Pi's own subnet (network.address).
 */
const firewall = z
  .strictObject({
    enabled: z.boolean({ error: "is not true or false" }).default(true),
    lan: z
      .array(
        z
          .string({ error: 'is not a string: give an IPv4 network such as "192.168.1.0/24"' })
          .regex(IPV4_CIDR_RE, { error: 'is not an IPv4 network with a prefix length such as "192.168.1.0/24"', abort: true })
          .refine((s) => Number(s.split("/")[1]) >= 8, { error: "is wider than a /8: a home network has a prefix length of 8 to 32, and a wider one would let much of the Internet in", abort: true })
          .refine(isNetworkCidr, { error: 'has host bits set: give the network\'s own address, e.g. "192.168.1.0/24" for 192.168.1.10/24' }),
        { error: 'is not a list of IPv4 networks such as ["192.168.1.0/24"]' },
      )
      .min(1, { error: "is empty: give at least one network, or leave firewall.lan out for the Pi's own subnet" })
      .optional(),
  })
  .prefault({});

export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  image,
  user,
  network,
  mqtt,
  tls,
  ddns: ddns.optional(),
  nodeRed,
  updates,
  firewall,
});

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;

export function isTopicFilter(filter: string): boolean {
  if (filter.length === 0 || Buffer.byteLength(filter) > 65535) return false;
  if (/[\u0000-\u001f\u007f]/u.test(filter) || filter !== filter.trim()) return false;
  const levels = filter.split("/");
  return levels.every((level, i) => {
    if (level.includes("#")) return level === "#" && i === levels.length - 1;
    if (level.includes("+")) return level === "+";
    return true;
  });
}

/** The JSON Schema that editors use to complete a config ("$schema" in examples/broker.json). */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
  return { ...schema, title: "pibake config" };
}
