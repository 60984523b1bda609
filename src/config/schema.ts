import * as z from "./zod.js";
import { isNetworkCidr } from "./rules.js";
import { keyboardLayoutProblem, keymapProblem, localeProblem, timezoneProblem } from "./lists.js";
import { sshKeyProblem } from "./ssh-key.js";
import { ARCHES, RELEASES } from "./model.js";
import { withDefaultsInDescriptions, type SchemaNode } from "./reference.js";

// A config is parsed once per process: zod's compiling each object's parser to JavaScript first
// (new Function, for speed on repeated parses) costs more than it saves. Same results, same messages.
z.config({ jitless: true });

/**
 * The config file's shape. Messages are phrased to follow the offending value:
 * the formatter prints `path: <value> <message>`, e.g.
 * `network.address: "192.168.1.300/24" is not an IPv4 address with a prefix length`.
 * Rules that involve several fields live in validate.ts.
 *
 * Each field's .meta() says what it means, once: its description (plain sentences, no
 * markdown: editors show it on hover) and examples of values it takes. The JSON Schema
 * and the field reference in docs/ are made from it (reference.ts, npm run schema).
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
    z.strictObject({
      env: z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: "is not an environment variable name" })
        .meta({ description: "The name of an environment variable that holds the secret when pibake runs." }),
    }),
    z.strictObject({
      file: z
        .string()
        .min(1, { error: "is empty" })
        .meta({ description: "The path of a file that holds the secret, relative to the config file; one final newline is dropped." }),
    }),
  ],
  { error: 'is not a secret: give a string, { "env": "VARIABLE" } or { "file": "path" }' },
);
export type SecretRef = z.infer<typeof secretRef>;
/** A secret field: what it is for, then how a secret may be given, the same words for each. */
const secret = (whatFor: string, examples: SecretRef[]) =>
  secretRef.meta({
    description: `${whatFor}. A secret, at least 8 characters: {"env": "NAME"} for an environment variable, {"file": "path"} for a file, or the string itself.`,
    examples,
  });

const port = (fallback: number) =>
  z
    .number({ error: "is not a port number" })
    .int({ error: "is not a whole number" })
    .min(1, { error: "is not a port number (1-65535)" })
    .max(65535, { error: "is not a port number (1-65535)" })
    .default(fallback);

const image = z.strictObject({
  name: z
    .string({ error: 'is required: a short name for the image, e.g. "mqtt-broker"' })
    .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, {
      error: "is not an image name: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
    })
    .meta({
      description:
        "The image's name, part of the output file names and of the state directory: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit.",
      examples: ["mqtt-broker"],
    }),
  release: z
    .enum(RELEASES, { error: 'is not a supported release: "trixie" or "bookworm"' })
    .default("trixie")
    .meta({ description: "The Raspberry Pi OS release to build: trixie (Debian 13) or bookworm (Debian 12)." }),
  arch: z
    .enum(ARCHES, { error: 'is not a supported architecture: "arm64" or "armhf"' })
    .default("arm64")
    .meta({ description: "The architecture: arm64 for a Pi 3, 4, 5 or Zero 2, armhf for every Pi." }),
  hostname: z
    .string()
    .regex(HOSTNAME_RE, { error: "is not a host name: letters, digits and '-', at most 63, not starting or ending with '-'" })
    .default("broker")
    .meta({ description: "The Pi's host name; with .local appended it is also a name in the server certificate.", examples: ["broker", "mqtt"] }),
  timezone: z
    .string()
    .regex(/^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/, { error: 'is not a time zone name such as "Europe/Berlin"', abort: true })
    .superRefine(problemOf(timezoneProblem))
    .default("Etc/UTC")
    .meta({
      description:
        "The Pi's time zone, a name of the tz database as the release's tzdata has it. From trixie on, old names such as US/Eastern are only in tzdata-legacy, which the image lacks.",
      examples: ["Europe/Berlin", "America/New_York"],
    }),
  locale: z
    .string()
    .regex(/^[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?$/, { error: 'is not a locale such as "en_GB.UTF-8"', abort: true })
    .superRefine(problemOf(localeProblem))
    .default("en_GB.UTF-8")
    .meta({ description: "The Pi's locale, one of the locales the release's glibc supports.", examples: ["en_GB.UTF-8", "de_DE.UTF-8"] }),
  keyboard: z
    .strictObject({
      keymap: z
        .string()
        .regex(/^[a-z]{2,8}$/, { error: 'is not an XKB layout code such as "gb" or "de"', abort: true })
        .superRefine(problemOf(keymapProblem))
        .meta({ description: "The keyboard's XKB layout code, as xkb-data lists it.", examples: ["de", "us"] }),
      layout: z
        .string()
        .regex(/^[A-Za-z0-9 ()._,-]{1,64}$/, { error: 'is not a keyboard layout name such as "English (UK)"', abort: true })
        .meta({
          description: "The name of that layout, or of one of its variants, as Debian lists them.",
          examples: ["German", "German - German (no dead keys)"],
        }),
    })
    .superRefine((k, ctx) => {
      const message = keyboardLayoutProblem(k.keymap, k.layout);
      if (message) ctx.addIssue({ code: "custom", message, path: ["layout"] });
    })
    .default({ keymap: "gb", layout: "English (UK)" })
    .meta({ description: "The keyboard of the Pi's console: a keymap and its layout's name." }),
  raspiosDate: z
    .string()
    .regex(/^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$/, { error: 'is not a release date such as "2025-12-04" (YYYY-MM-DD)' })
    .optional()
    .meta({
      description:
        "Builds from the official image: the Raspberry Pi OS Lite release to start from, by its date (YYYY-MM-DD); --base raspios@DATE overrides it. Without it, the newest release.",
      examples: ["2025-12-04"],
    }),
  baseStages: z
    .array(z.string().min(1, { error: "is empty: give a stage directory" }), { error: "is not a list of pi-gen stage directories" })
    .optional()
    .meta({
      description:
        "pi-gen builds only (--engine pi-gen): stage directories, relative to the config file, that replace pi-gen's stage0-2, e.g. a leaner or a company base; --base-stages overrides them. Without it, pi-gen's own stage0-2.",
      examples: [["my-stage0", "my-stage1"]],
    }),
});

const user = z.strictObject({
  name: z
    .string({ error: "is required: the first user's login name" })
    .regex(LINUX_USER_RE, {
      error: "is not a Linux user name: lower-case letters, digits, '-' and '_', starting with a letter, at most 32",
    })
    .refine((n) => !isSystemAccount(n), {
      error: 'is a system account or group of Raspberry Pi OS, which cannot be the login user: choose a personal name such as "admin"',
    })
    .meta({
      description: "The first user's login name: lower-case letters, digits, '-' and '_', starting with a letter, and not an account the system already has.",
      examples: ["admin"],
    }),
  password: secret("The first user's password; only its hash reaches the image", [{ env: "PIBAKE_USER_PASSWORD" }, { file: "secrets/user-password.txt" }]),
  sshKeys: z
    .array(
      z
        .string()
        .regex(SSH_KEY_RE, { error: 'is not an SSH public key line such as "ssh-ed25519 AAAA… you@laptop"', abort: true })
        .superRefine(problemOf(sshKeyProblem)),
    )
    .default([])
    .meta({
      description:
        "Public keys that may log in over SSH as the first user, each line as in its .pub file (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521 or an sk- security key). Each is decoded as OpenSSH does, so a damaged key is refused.",
      examples: [["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F you@laptop"]],
    }),
  passwordSsh: z
    .boolean({ error: "is not true or false" })
    .default(false)
    .meta({ description: "Whether SSH also accepts the password; false needs at least one key in sshKeys." }),
});

const wifi = z.strictObject({
  ssid: z
    .string()
    .min(1, { error: "is empty" })
    .refine((s) => Buffer.byteLength(s) <= 32, { error: "is longer than 32 bytes, the most an SSID can be" })
    // Radios allow any byte, but no command line (nmcli, wpa_passphrase, iw) can be given a NUL.
    .refine((s) => !s.includes("\u0000"), { error: "contains a NUL character, which no Wi-Fi tool on the Pi can be given" })
    .meta({ description: "The name of the Wi-Fi network, at most 32 bytes.", examples: ["Home"] }),
  passphrase: secret("The Wi-Fi passphrase, 8 to 63 characters; only the WPA key made from it reaches the image", [
    { env: "PIBAKE_WIFI_PASSPHRASE" },
    { file: "secrets/wifi.txt" },
  ]),
  country: z
    .string()
    .regex(/^[A-Z]{2}$/, { error: 'is not a two-letter country code such as "DE" or "GB"' })
    .meta({ description: "The country the Pi is in, as a two-letter code in capitals: it decides which radio channels are allowed.", examples: ["DE", "GB"] }),
});

const network = z.strictObject({
  interface: z
    .string()
    .regex(/^[a-z][a-z0-9]{1,14}$/, { error: 'is not a network interface name such as "eth0" or "wlan0"' })
    .default("eth0")
    .meta({ description: "The network interface that gets the static address: eth0, or wlan0 together with wifi.", examples: ["eth0", "wlan0"] }),
  address: z
    .string({ error: 'is required: the Pi\'s static address with prefix length, e.g. "192.168.1.10/24"' })
    .regex(IPV4_CIDR_RE, {
      error: "is not an IPv4 address with a prefix length",
    })
    .meta({ description: "The Pi's static IPv4 address with its prefix length.", examples: ["192.168.1.10/24"] }),
  gateway: z
    .string({ error: "is required: the router's address" })
    .regex(IPV4_RE, { error: "is not an IPv4 address" })
    .meta({
      description: "Your router's address: inside the subnet of address, and neither its network nor its broadcast address.",
      examples: ["192.168.1.1"],
    }),
  dns: z
    .array(z.string().regex(IPV4_RE, { error: "is not an IPv4 address" }))
    .min(1, { error: "is empty: give at least one DNS server" })
    .default(["9.9.9.9", "1.1.1.1"])
    .meta({ description: "The DNS servers the Pi asks, as IPv4 addresses.", examples: [["192.168.1.1", "9.9.9.9"]] }),
  wifi: wifi.optional().meta({ description: "A Wi-Fi network to join. With interface eth0, Wi-Fi gets its address from the router. Without it, no Wi-Fi." }),
});

const topicRule = z.strictObject({
  access: z
    .enum(["read", "write", "readwrite"], { error: 'is not an access kind: "read", "write" or "readwrite"' })
    .meta({ description: "What the user may do on topic: read (subscribe), write (publish) or readwrite." }),
  topic: z
    .string()
    .refine(isTopicFilter, { error: "is not an MQTT topic filter ('#' only as the whole last level, '+' only as a whole level)" })
    .meta({ description: "An MQTT topic filter: '+' stands for one level, '#' as the last level for all below.", examples: ["home/#", "home/+/temperature"] }),
});

const mqttUser = z.strictObject({
  name: z
    .string()
    .regex(MQTT_USER_RE, { error: "is not an MQTT user name: 1-64 characters, no white space, ':' or '#'" })
    .meta({ description: "The user's MQTT name: 1 to 64 characters, no white space, ':' or '#'.", examples: ["sensors", "phone"] }),
  password: secret("The user's MQTT password; only its hash reaches the image", [{ env: "PIBAKE_MQTT_SENSORS_PASSWORD" }, { file: "secrets/mqtt-phone.txt" }]),
  topics: z.array(topicRule).optional().meta({ description: "The topics this user may read or write. Without it, the user may use every topic." }),
});

const websockets = z.strictObject({
  tlsPort: port(8884).meta({ description: "The port of MQTT over WebSockets with TLS, with the same certificate, users and topics as the TLS listener." }),
  lan: z
    .boolean({ error: "is not true or false" })
    .default(false)
    .meta({ description: "Whether a plain WebSockets listener on lanPort serves the home network too." }),
  lanPort: port(1884).meta({ description: "The port of plain MQTT over WebSockets for the home network, used only when lan is true." }),
});

/**
 * Mosquitto's own default is 1800 s. Each save rewrites the whole file (a new
 * file, then a rename), changed or not, so a shorter interval costs SD-card
 * writes: 288 saves a day of a home broker's 50 KB file are some 15 MB a day,
 * 5 GB a year, well below the terabytes even a small card takes before it wears
 * out. What a power cut loses is what changed since the last save (retained
 * messages, sessions, queued QoS 1 and 2 messages): at most 5 minutes, not 30.
 */
export const AUTOSAVE_INTERVAL_S = 300;

const mqtt = z.strictObject({
  lanPort: port(1883).meta({ description: "The port of the plain MQTT listener, for the home network only." }),
  tlsPort: port(8883).meta({ description: "The port of the MQTT listener with TLS, for clients at home and on the Internet." }),
  persistence: z
    .boolean({ error: "is not true or false" })
    .default(true)
    .meta({ description: "Whether the broker keeps retained messages and sessions across restarts, in a file on the SD card." }),
  // No zod default: validation must tell a given interval from an absent one (it refuses one without persistence).
  autosaveInterval: z
    .number({ error: "is not a number of seconds" })
    .int({ error: "is not a whole number of seconds" })
    .min(60, { error: "is too short: at least 60 seconds (every save rewrites the whole persistence file on the SD card)" })
    .max(86400, { error: "is longer than a day: retained messages of a whole day would be lost on a power cut" })
    .optional()
    .meta({
      description:
        "Seconds between saves of the persistence file, 60 to 86400, only with persistence. A power cut loses what changed since the last save, and each save rewrites the file on the SD card.",
      default: AUTOSAVE_INTERVAL_S,
    }),
  websockets: websockets
    .optional()
    .meta({ description: "MQTT over WebSockets, for browsers: a TLS listener, and on request a plain one for the home network. Without it, no WebSockets." }),
  users: z
    .array(mqttUser)
    .min(1, { error: "is empty: the broker allows no anonymous access, so give at least one user" })
    .meta({ description: "The MQTT users, at least one: the broker allows no anonymous access." }),
});

/** ACME directories of Let's Encrypt: production, and staging (untrusted certificates, higher rate limits) for trying it. */
export const LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory";
export const LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory";

const tls = z.strictObject({
  domain: z
    .string({ error: 'is required: the public DNS name clients use, e.g. "home.freemyip.com"' })
    .regex(DNS_NAME_RE, { error: "is not a valid DNS name" })
    .refine((s) => s.includes("."), {
      error: "is not a fully qualified DNS name (it needs a dot)",
    })
    .meta({ description: "The public DNS name clients connect to, the server certificate's main name.", examples: ["home.freemyip.com"] }),
  extraNames: z
    .array(
      z
        .string()
        .refine((s) => !NUMERIC_NAME_RE.test(s) || IPV4_RE.test(s), {
          error: "is not an IPv4 address (four numbers of 0-255), and all-numeric names are not DNS names",
        })
        .refine((s) => NUMERIC_NAME_RE.test(s) || DNS_NAME_RE.test(s), { error: "is neither a DNS name nor an IPv4 address" }),
    )
    .default([])
    .meta({
      description:
        "More DNS names or IPv4 addresses for the server certificate, besides domain, the host name with .local and the Pi's address. With tls.mode acme they stay in the own CA's certificate, which the broker no longer serves once the public one has arrived.",
      examples: [["broker.lan", "192.168.1.11"]],
    }),
  mode: z.enum(["own-ca", "acme"], { error: 'is not a TLS mode: "own-ca" or "acme"' }).default("own-ca").meta({
    description:
      "Who signs the TLS listeners' certificate: own-ca (pibake's CA: clients install ca.crt) or acme (a publicly trusted certificate for tls.domain, obtained and renewed on the Pi through a DNS-01 challenge at freemyip).",
  }),
  acme: z
    .strictObject({
      email: z
        .string({ error: 'is required: the address the CA writes to about the account, e.g. "you@example.org"' })
        .regex(/^[!#-&(-?A-[\]-~]+@[!#-&(-?A-[\]-~]+\.[!#-&(-?A-[\]-~]+$/, {
          error: "is not an e-mail address (printable ASCII without quotes, a backslash or white space)",
        })
        .meta({ description: "The ACME account's contact address, for expiry notices and policy changes.", examples: ["you@example.org"] }),
      server: z
        .string()
        .regex(/^https:\/\/[!#-&(-[\]-~]+$/, { error: "is not an https URL of an ACME directory (printable ASCII, no quotes, backslash or white space)" })
        .default(LETS_ENCRYPT)
        .meta({
          description: `The ACME directory's URL: Let's Encrypt's production by default; try its staging directory (${LETS_ENCRYPT_STAGING}) first.`,
          examples: [LETS_ENCRYPT_STAGING],
        }),
    })
    .optional()
    .meta({ description: "With tls.mode acme: the ACME account and the CA that issues the certificate." }),
});

const interval = z
  .number({ error: "is not a number of seconds" })
  .int({ error: "is not a whole number of seconds" })
  .min(60, { error: "is too short: at least 60 seconds, so that the provider does not block the Pi" })
  .max(86400, { error: "is longer than a day" })
  .default(300)
  .meta({ description: "Seconds between checks of the Internet address, 60 to 86400." });
/**
 * What ddclient's config carries in single quotes (ddclientQuote in src/render/templates.ts): printable
 * ASCII but ' and \ (no escape is relied on) and '#' (ddclient cuts comments before it reads quotes).
 * White space is squeezed and ends lines; 3.11+ mangle non-ASCII (byte 0x85) on the way to curl.
 * URL: no '"' either. Login: no ':', which ends the login in HTTP Basic credentials.
 */
const DDCLIENT_URL_RE = /^https?:\/\/[!$-&(-[\]-~]+$/;
const DDCLIENT_LOGIN_RE = /^[!"$-&(-9;-[\]-~]+$/;
/** ddclient takes a line with "password" and then "=" in it for a password setting, whatever comes before. */
const NO_PASSWORD_SETTING = [
  (s: string) => !/password.*=/i.test(s),
  { error: 'contains "password" followed by "=", which ddclient would read as a password setting' },
] as const;
const ipLookup = z
  .string()
  .regex(/^https?:\/\/[^/?#]/, { error: "is not an http(s) URL", abort: true })
  .regex(DDCLIENT_URL_RE, {
    error: "is not a URL that ddclient's config can carry: printable ASCII without white space, quotes, a backslash or '#' (percent-encode them)",
    abort: true,
  })
  .refine(...NO_PASSWORD_SETTING)
  .default("https://api.ipify.org/")
  .meta({
    description: "The web service that tells the router's Internet address, an http(s) URL.",
    examples: ["https://api.ipify.org/", "https://ifconfig.me/ip"],
  });
const ddnsHostname = z
  .string()
  .regex(DNS_NAME_RE, { error: "is not a valid DNS name" })
  .optional()
  .meta({ description: "The name to update at the provider. Without it, tls.domain.", examples: ["home.freemyip.com"] });
/** The same words on both variants: an editor shows whichever the file matches. */
const provider = <const Name extends string>(name: Name) =>
  z
    .literal(name)
    .meta({ description: "The DDNS service: freemyip needs token; dyndns2, the protocol many providers speak, needs server, login and password." });

const ddns = z.discriminatedUnion(
  "provider",
  [
    z.strictObject({
      provider: provider("freemyip"),
      token: secret("freemyip only: the token of your freemyip name; the Pi keeps it in clear, in a file only root may read", [{ env: "FREEMYIP_TOKEN" }]),
      interval,
      ipLookup,
      hostname: ddnsHostname,
    }),
    z.strictObject({
      provider: provider("dyndns2"),
      // ddclient drops a server without a dot as invalid and sends the login to members.dyndns.org instead.
      server: z
        .string()
        .regex(DNS_NAME_RE, { error: "is not a host name", abort: true })
        .refine((s) => s.includes("."), { error: "is not a fully qualified host name (it needs a dot; ddclient would use members.dyndns.org instead)" })
        .meta({ description: "dyndns2 only: the provider's update server, a host name.", examples: ["members.dyndns.org", "dynupdate.no-ip.com"] }),
      login: z
        .string()
        .regex(DDCLIENT_LOGIN_RE, {
          error:
            "is not a login name that ddclient's config can carry: printable ASCII without white space, a single quote, a backslash, '#' or ':' (':' would end the login in HTTP Basic auth)",
          abort: true,
        })
        .refine(...NO_PASSWORD_SETTING)
        .meta({ description: "dyndns2 only: your login at the provider." }),
      password: secret("dyndns2 only: your password at the provider, kept on the Pi in a file only root may read", [{ env: "PIBAKE_DDNS_PASSWORD" }]),
      interval,
      ipLookup,
      hostname: ddnsHostname,
    }),
  ],
  { error: 'is not a DDNS provider: "freemyip" or "dyndns2"' },
);

/** src/config/node-red.ts has Node-RED's cross-field rules. */
const nodeRed = z
  .strictObject({
    enabled: z.boolean({ error: "is not true or false" }).default(true).meta({ description: "Whether the image has Node-RED; false leaves it out." }),
    install: z
      .enum(["firstboot", "build"], { error: 'is not an install time: "firstboot" (from the registry on first boot) or "build" (into the image)' })
      .default("firstboot")
      .meta({
        description:
          "When Node-RED is installed: firstboot (npm installs it on the Pi's first boot) or build (into the image, for a Pi without Internet on its first boot).",
      }),
    port: port(1880).meta({ description: "The port of Node-RED's editor and dashboard, for the home network only." }),
    admin: z
      .strictObject({
        user: z
          .string()
          .regex(/^[A-Za-z0-9._@-]{1,64}$/, { error: "is not a user name: 1-64 letters, digits, '.', '_', '@' or '-'" })
          .default("admin")
          .meta({ description: "The user name of the editor's login." }),
        password: secret(
          "The password of the editor's login; it reaches the Pi only as a bcrypt hash. Without it, pibake makes one and keeps it in the state directory (node-red-admin-password)",
          [{ env: "PIBAKE_NODE_RED_PASSWORD" }, { file: "secrets/node-red.txt" }],
        ).optional(),
      })
      .prefault({})
      .meta({ description: "The login in front of Node-RED's editor." }),
    dashboard: z
      .enum(["flowfuse", "classic", "none"], { error: 'is not a dashboard: "flowfuse", "classic" or "none"' })
      .default("flowfuse")
      .meta({ description: "The dashboard: flowfuse (Dashboard 2.0), classic (node-red-dashboard, deprecated upstream) or none." }),
    protectDashboard: z
      .boolean({ error: "is not true or false" })
      .default(false)
      .meta({ description: "Whether the editor's login also guards the dashboard, its live data and every HTTP endpoint of your flows." }),
    mqttUser: z
      .string()
      .regex(MQTT_USER_RE, { error: "is not an MQTT user name: 1-64 characters, no white space, ':' or '#'" })
      .optional()
      .meta({
        description:
          "The MQTT user Node-RED connects as, one of mqtt.users that may read exampleTopic. Without it, pibake adds a user nodered, with a password it makes and keeps in the state directory, that may read exampleTopic.",
        examples: ["nodered"],
      }),
    exampleTopic: z
      .string()
      .refine(isTopicFilter, { error: "is not an MQTT topic filter ('#' only as the whole last level, '+' only as a whole level)" })
      .default("home/example")
      .meta({ description: "The topic filter the example flow subscribes to and shows.", examples: ["home/sensors/#"] }),
    version: z
      .string()
      .regex(/^\d+\.\d+\.\d+$/, { error: 'is not an exact Node-RED version such as "4.1.15"' })
      .optional()
      .meta({
        description:
          "An exact Node-RED version to install. Without it, pibake chooses the newest release that the release's Node.js runs, and keeps that choice.",
        examples: ["4.1.15"],
      }),
  })
  .prefault({})
  .meta({
    description:
      "Node-RED on the broker, with its editor behind a login, a dashboard and an example flow connected to the local Mosquitto. On unless enabled is false.",
  });

const updates = z
  .strictObject({
    enabled: z.boolean({ error: "is not true or false" }).default(true).meta({
      description:
        "Whether unattended-upgrades installs updates every day, from Debian (the release and its security archive) and from Raspberry Pi's archive.",
    }),
    reboot: z
      .strictObject({
        time: z
          .string({ error: 'is required: the time of day to reboot at when an update needs it, e.g. "04:00"' })
          .regex(/^([01][0-9]|2[0-3]):[0-5][0-9]$/, {
            error: 'is not a time of day as HH:MM (24-hour clock, two digits each), e.g. "04:00"',
          })
          .meta({ description: "The time of day to reboot at, HH:MM on a 24-hour clock in the Pi's time zone.", examples: ["04:00"] }),
      })
      .optional()
      .meta({
        description:
          "Reboots when an update needs one, such as a new kernel or libc. Without it, the Pi never reboots by itself, and such an update waits for a reboot by hand.",
      }),
  })
  .prefault({})
  .meta({ description: "Security and other updates, installed by Debian's unattended-upgrades every day unless enabled is false." });

/** Rendered by src/render/firewall.ts, which lists every open port with its reason. */
const firewall = z
  .strictObject({
    enabled: z
      .boolean({ error: "is not true or false" })
      .default(true)
      .meta({ description: "Whether the Pi has its firewall and fail2ban; false turns both off." }),
    lan: z
      .array(
        z
          .string({ error: 'is not a string: give an IPv4 network such as "192.168.1.0/24"' })
          .regex(IPV4_CIDR_RE, { error: 'is not an IPv4 network with a prefix length such as "192.168.1.0/24"', abort: true })
          .refine((s) => Number(s.split("/")[1]) >= 8, {
            error: "is wider than a /8: a home network has a prefix length of 8 to 32, and a wider one would let much of the Internet in",
            abort: true,
          })
          .refine(isNetworkCidr, { error: 'has host bits set: give the network\'s own address, e.g. "192.168.1.0/24" for 192.168.1.10/24' }),
        { error: 'is not a list of IPv4 networks such as ["192.168.1.0/24"]' },
      )
      .min(1, { error: "is empty: give at least one network, or leave firewall.lan out for the Pi's own subnet" })
      .optional()
      .meta({
        description:
          "The IPv4 networks that count as home, each with its prefix length (/8 or narrower): they may reach plain MQTT, SSH and Node-RED. List Wi-Fi's subnet too if it differs from the static address's. Without it, the Pi's own subnet (from network.address).",
        examples: [["192.168.1.0/24", "10.8.0.0/24"]],
      }),
  })
  .prefault({})
  .meta({
    description:
      "The Pi's firewall: the Internet reaches only MQTT with TLS (and WebSockets with TLS); the home network also reaches plain MQTT, SSH and Node-RED. fail2ban bans addresses that fail to log in again and again.",
  });

export const configSchema = z.strictObject({
  $schema: z
    .string()
    .optional()
    .meta({
      description: "Where editors find this file's JSON Schema (pibake schema prints it), relative to this file. pibake does not read it.",
      examples: ["../schema/pibake.schema.json"],
    }),
  image: image.meta({
    description: "The image: its name, the Raspberry Pi OS release and architecture, and the Pi's host name, time zone, locale and keyboard.",
  }),
  user: user.meta({ description: "The first user, who logs in over SSH and runs Node-RED." }),
  network: network.meta({ description: "The Pi's network: a static IPv4 address on one interface, and Wi-Fi if wanted." }),
  mqtt: mqtt.meta({ description: "The Mosquitto broker: its listeners, persistence and users. Every client logs in; nobody is anonymous." }),
  tls: tls.meta({ description: "The names in the server certificate, which pibake's own CA signs." }),
  ddns: ddns.optional().meta({ description: "Dynamic DNS: ddclient keeps tls.domain pointing at the router's Internet address. Without it, no ddclient." }),
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

/** The config's JSON Schema as zod makes it: each field's description, default and examples from its .meta() above. */
export function describedJsonSchema(): SchemaNode & Record<string, unknown> {
  return z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" }) as SchemaNode & Record<string, unknown>;
}

/** The JSON Schema that editors use to complete a config ("$schema" in examples/broker.json). */
export function configJsonSchema(): Record<string, unknown> {
  return { ...withDefaultsInDescriptions(describedJsonSchema()), title: "pibake config" };
}
