/**
 * Hostile input, field by field. For every string a config can hold, each
 * character that is special to a program reading the file the string lands in
 * (and a set that every file fears: NUL, line ends, control characters, blanks
 * at the ends, non-ASCII) is put into an otherwise valid value. Either the
 * config is refused with the field named, or the value is rendered and the real
 * consumer reads it back unchanged: bash sourcing pi-gen.config, mosquitto
 * logging a user in and applying the ACL, nmcli --offline, ddclient, openssl,
 * ssh-keygen, libc's crypt, wpa_passphrase, Node, nft, fail2ban.
 *
 * The list of fields is checked against the config's own JSON Schema, so a
 * field added to the config fails this test until it says where its value goes.
 */
import { execa } from "execa";
import bcrypt from "bcryptjs";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config/load.js";
import { configJsonSchema } from "../src/config/schema.js";
import { ConfigError } from "../src/errors.js";
import { secretEnv, validConfig } from "./helpers/cli.js";
import { mustConnect, clients, inbox, subscribe, startRenderedBroker } from "./helpers/mosquitto.js";
import { removeAllFixtures, renderFixture, tempDir, type Fixture, type TestConfig } from "./helpers/render-fixture.js";
import { dumped, runDdclient } from "./helpers/ddclient.js";

afterAll(() => removeAllFixtures());

/** What one program reading a rendered file makes of a value; a problem in words, or undefined when it read it unchanged. */
interface Reader {
  consumer: Consumer;
  check(fx: Fixture, value: string): Promise<string | undefined>;
}

interface Consumer {
  name: string;
  /** The characters that mean something in this consumer's file. */
  specials: string[];
}

/** Feared by every file: NUL, line ends, tab, escape, DEL, blanks, a backslash, non-ASCII, a JavaScript line separator. */
const EVERYWHERE = ["\u0000", "\n", "\r", "\t", "\u001b", "\u007f", " ", "\\", "é", "😀", "\u2028"];

const BASH: Consumer = {
  name: "bash (pi-gen.config, firstboot.sh)",
  specials: ["'", '"', "$", "`", "$(id)", "!", "*", "?", ";", "&", "|", "<", ">", "(", ")", "{", "}", "[", "]", "#", "~"],
};
const MOSQUITTO: Consumer = { name: "mosquitto (passwd, acl)", specials: [":", "#", "%", "+", "/", "'", '"', "$"] };
const KEYFILE: Consumer = { name: "NetworkManager (nmcli --offline)", specials: [";", "=", "[", "]", "#", ",", "'", '"', "$"] };
const DDCLIENT: Consumer = { name: "ddclient", specials: [",", "#", "=", "'", '"', "$", "%", "&", "?", "@", ":", "/"] };
const X509: Consumer = { name: "openssl x509", specials: [",", "=", "*", "/", ":", "'", '"'] };
const SSH_KEYS: Consumer = { name: "ssh-keygen (authorized_keys)", specials: ['"', ",", "=", "#", "'"] };
const CRYPT: Consumer = { name: "libc crypt (shadow)", specials: [":", "$", "'", '"', "!", "*"] };
const WPA: Consumer = { name: "wpa_passphrase", specials: ['"', "'", "#", "$"] };
const NODE: Consumer = { name: "Node (settings.js, flows.json)", specials: ['"', "'", "`", "${x}", "</script>", "*/", "\u2029"] };
const BCRYPT: Consumer = { name: "bcrypt (Node-RED's adminAuth)", specials: ["$", '"', "'"] };
const APT: Consumer = { name: "apt-config (apt.conf.d)", specials: ['"', ";", "{", "}", "//", "/*", "#", "::", "$"] };
const NFT: Consumer = { name: "nft (nftables.conf)", specials: ["{", "}", ",", ";", "#", '"', "$", "@", "-", "*", "/0", "::"] };

const tmp = tempDir("pibake-hostile-");
let fileNo = 0;
function tempFile(content: string | Buffer): string {
  const f = path.join(tmp, `f${fileNo++}`);
  writeFileSync(f, content);
  return f;
}

const same = (what: string, got: string, want: string) => (got === want ? undefined : `${what} came back as ${JSON.stringify(got)}`);

/** bash sources pi-gen.config, as pi-gen's build.sh does, and prints one variable. */
function piGenVar(name: string, expected: (v: string) => string = (v) => v): Reader {
  return {
    consumer: BASH,
    async check(fx, v) {
      const r = await execa("bash", ["-c", `set -eu; . "$1"; printf '%s' "\${${name}}"`, "bash", tempFile(fx.rendered.piGenConfig)], {
        timeout: 10_000,
        reject: false,
      });
      return r.exitCode === 0 ? same(`bash's ${name}`, r.stdout, expected(v)) : `bash could not source pi-gen.config: ${r.stderr}`;
    },
  };
}

/** A constant of a rendered bash script (readonly NAME=…), as bash reads it. */
function scriptConstant(file: string, name: string): Reader {
  return {
    consumer: BASH,
    async check(fx, v) {
      const line = fx
        .overlayText(file)
        .split("\n")
        .find((l) => l.startsWith(`readonly ${name}=`));
      if (!line) return `${file} has no readonly ${name}=`;
      const r = await execa("bash", ["-c", `set -eu; ${line}; printf '%s' "\${${name}}"`], { timeout: 10_000, reject: false });
      return r.exitCode === 0 ? same(`bash's ${name} in ${file}`, r.stdout, v) : `bash could not read ${name} in ${file}: ${r.stderr}`;
    },
  };
}

/**
 * The networks of the firewall's LAN set, as nft reads them: the rendered
 * ruleset loaded with `nft -f` into a network namespace of its own (unshare,
 * gone with the process), then listed as JSON.
 */
function nftLanSet(): Reader {
  return {
    consumer: NFT,
    async check(fx, v) {
      const ns = process.getuid?.() === 0 ? ["--net"] : ["--user", "--map-root-user", "--net"];
      const script = 'nft -f "$1" && nft -j list set inet pibake lan4';
      const r = await execa("unshare", [...ns, "sh", "-c", script, "sh", tempFile(fx.overlayFile("etc/nftables.conf"))], { timeout: 10_000, reject: false });
      if (r.exitCode !== 0) return `nft could not load the ruleset: ${r.stderr}`;
      const set = (JSON.parse(r.stdout) as { nftables: { set?: { elem?: (string | { prefix: { addr: string; len: number } })[] } }[] }).nftables.find(
        (x) => x.set,
      )?.set;
      const got = (set?.elem ?? []).map((e) => (typeof e === "string" ? `${e}/32` : `${e.prefix.addr}/${e.prefix.len}`));
      return same("nft's lan4 set", got.join(", "), v);
    },
  };
}

const FAIL2BAN: Consumer = { name: "fail2ban (jail.d/pibake.local)", specials: ["%", "(", ")", "<", ">", "[", "]", ",", ";", "#", "="] };

/** The jails' ignoreip, as fail2ban-client -d reads the rendered jail file on top of Debian's configuration. */
function fail2banIgnoreIp(): Reader {
  return {
    consumer: FAIL2BAN,
    async check(fx, v) {
      const dir = path.join(tmp, `f2b${fileNo++}`);
      await execa("cp", ["-r", "/etc/fail2ban", dir]);
      writeFileSync(path.join(dir, "jail.d/pibake.local"), fx.overlayFile("etc/fail2ban/jail.d/pibake.local"));
      writeFileSync(path.join(dir, "filter.d/pibake-mosquitto.conf"), fx.overlayFile("etc/fail2ban/filter.d/pibake-mosquitto.conf"));
      const r = await execa("fail2ban-client", ["-c", dir, "-d"], { timeout: 30_000, reject: false });
      if (r.exitCode !== 0) return `fail2ban-client could not read the jails: ${r.stderr}`;
      const line = r.stdout.split("\n").find((l) => l.startsWith("['set', 'pibake-mosquitto', 'addignoreip'"));
      const ips = line ? (JSON.parse(line.replaceAll("'", '"')) as string[]).slice(3) : [];
      return same("the mosquitto jail's last ignoreip", String(ips.at(-1)), v);
    },
  };
}

/** The names in the server certificate, as openssl prints them. */
function certificateName(expected: (v: string) => string): Reader {
  return {
    consumer: X509,
    async check(fx, v) {
      const r = await execa("openssl", ["x509", "-noout", "-ext", "subjectAltName", "-in", tempFile(fx.secrets.pki.serverCertPem)], { timeout: 10_000 });
      const names = r.stdout.split("\n").slice(1).join("").trim().split(/,\s*/);
      return names.includes(`DNS:${expected(v)}`) ? undefined : `openssl found ${names.join(", ")}, not DNS:${expected(v)}`;
    },
  };
}

/** NetworkManager normalizes the rendered keyfile; the key must come back with the value NetworkManager itself writes for it. */
function keyfileValue(file: string, setting: string, section: string, key: string, nmValue: (v: string) => string = (v) => v): Reader {
  return {
    consumer: KEYFILE,
    async check(fx, v) {
      const keyfile = fx.overlayText(file);
      const nmcli = (args: string[]) => execa("nmcli", ["--offline", "connection", "modify", ...args], { input: keyfile, timeout: 15_000, reject: false });
      const [asRendered, asIntended] = await Promise.all([nmcli(["connection.metered", "no"]), nmcli([setting, nmValue(v)])]);
      if (asRendered.exitCode !== 0) return `nmcli refused the rendered keyfile: ${asRendered.stderr}`;
      if (asIntended.exitCode !== 0) return `nmcli refused ${setting} ${JSON.stringify(nmValue(v))}: ${asIntended.stderr}`;
      const line = (out: string) => {
        const lines = out.split("\n");
        const start = lines.indexOf(`[${section}]`);
        return lines.slice(start + 1).find((l) => l.startsWith(`${key}=`));
      };
      return same(`[${section}] ${key}`, String(line(asRendered.stdout)), String(line(asIntended.stdout)));
    },
  };
}

/** The broker logs the user in with the password (LAN listener), and lets it use the topic when one is given. */
function mosquittoLogin(
  user: (v: string) => string,
  password: (fx: Fixture, v: string) => string,
  topic?: (v: string) => string,
  /** Who publishes the test message, when the user itself may only read. */
  publisher?: { username: string; password: string },
): Reader {
  return {
    consumer: MOSQUITTO,
    async check(fx, v) {
      const running = await startRenderedBroker(fx);
      try {
        const client = await mustConnect({ protocol: "mqtt", host: "127.0.0.1", port: running.lanPort, username: user(v), password: password(fx, v) });
        if (topic) {
          const t = topic(v);
          const qos = await subscribe(client, t);
          if (qos === 128) return `mosquitto refused the subscription to ${JSON.stringify(t)}`;
          if (!/[+#]/.test(t)) {
            const box = inbox(client);
            const sender = publisher ? await mustConnect({ protocol: "mqtt", host: "127.0.0.1", port: running.lanPort, ...publisher }) : client;
            await sender.publishAsync(t, "hostile", { qos: 1 });
            if (!(await box.waitFor(t, "hostile"))) return `a message on ${JSON.stringify(t)} did not come back: the ACL did not grant that topic`;
          }
        }
        return undefined;
      } catch (err) {
        return `${(err as Error).message}\n${running.broker.log.split("\n").slice(-5).join("\n")}`;
      } finally {
        await Promise.all([...clients].map((c) => c.endAsync(true).catch(() => undefined)));
        clients.clear();
        await running.broker.stop();
      }
    },
  };
}

/** What ddclient would send: the freemyip token in the URL, or dyndns2's login and password in the Basic header. */
function ddclientCredentials(which: "token" | "login" | "password"): Reader {
  return {
    consumer: DDCLIENT,
    async check(fx, v) {
      const ddns = fx.model.ddns!;
      const login = ddns.provider === "dyndns2" ? ddns.login : undefined;
      const run = await runDdclient(fx.overlayText("etc/ddclient.conf"), fx.clear.ddns!, login);
      if (dumped(run.output, "globals{usev4}") !== "webv4") return "usev4 is no longer webv4: a value injected a setting";
      if (ddns.provider === "freemyip") return run.sentTokenIs(v) ? undefined : "ddclient would send another token";
      const intended = which === "login" ? `${v}:${ddns.password.reveal()}` : `${ddns.login}:${v}`;
      return run.basicAuthIs(intended) ? undefined : "ddclient would send other credentials";
    },
  };
}

/** The config's users and those pibake adds (Node-RED's), as the secrets step returns them. */
const passwordOf = (name: string) => (fx: Fixture) => fx.secrets.mqttUsers.find((u) => u.name === name)!.password.reveal();

/** The real ddclient parses the rendered file (-noexec: nothing is sent) and shows what it read. */
function ddclientValue(key: string, expected: (v: string) => string = (v) => v): Reader {
  return {
    consumer: DDCLIENT,
    async check(fx, v) {
      const run = await runDdclient(fx.overlayText("etc/ddclient.conf"), fx.clear.ddns!);
      const host = fx.model.ddns!.hostname;
      const got = key === "webv4" ? dumped(run.output, "globals{webv4}") : dumped(run.output, `config{${host}}{${key}}`);
      const injected = dumped(run.output, "globals{usev4}") !== "webv4" ? "usev4 is no longer webv4: a value injected a setting" : undefined;
      return injected ?? (got === expected(v) ? undefined : `ddclient read ${key} as ${got === undefined ? "nothing" : "another value"}`);
    },
  };
}

/** Where a value lands, and how to put it into a config. */
interface Field {
  base: string;
  /** Where in `base` the hostile characters go (default: the middle). */
  at?: number;
  set(c: TestConfig, v: string, env: Record<string, string>): void;
  readers: Reader[];
}

/** A secret: given through an environment variable, as users are told to. */
const secret = (put: (c: TestConfig, ref: { env: string }) => void) => (c: TestConfig, v: string, env: Record<string, string>) => {
  env.T_HOSTILE = v;
  put(c, { env: "T_HOSTILE" });
};

const dyndns2 = (c: TestConfig) => {
  c.tls.domain = "home.example.org";
  c.ddns = { provider: "dyndns2", server: "members.dyndns.org", login: "home-user", password: { env: "T_DDNS_TOKEN" }, hostname: "mqtt.example.org" };
  return c.ddns;
};
const withWifi = (c: TestConfig) => (c.network.wifi ??= { ssid: "Home Net", passphrase: { env: "T_WIFI_PW" }, country: "DE" });
const KEY = validConfig().user.sshKeys[0] as string;

const FIELDS: Record<string, Field> = {
  "image.name": { base: "test-broker", set: (c, v) => (c.image.name = v), readers: [piGenVar("IMG_NAME")] },
  "image.hostname": {
    base: "broker",
    set: (c, v) => (c.image.hostname = v),
    readers: [piGenVar("TARGET_HOSTNAME"), certificateName((v) => `${v.toLowerCase()}.local`)],
  },
  "image.timezone": { base: "Europe/Berlin", set: (c, v) => (c.image.timezone = v), readers: [piGenVar("TIMEZONE_DEFAULT")] },
  "image.locale": { base: "en_GB.UTF-8", set: (c, v) => (c.image.locale = v), readers: [piGenVar("LOCALE_DEFAULT")] },
  "image.keyboard.keymap": { base: "de", set: (c, v) => (c.image.keyboard.keymap = v), readers: [piGenVar("KEYBOARD_KEYMAP")] },
  "image.keyboard.layout": { base: "German", set: (c, v) => (c.image.keyboard.layout = v), readers: [piGenVar("KEYBOARD_LAYOUT")] },
  "user.name": { base: "admin", set: (c, v) => (c.user.name = v), readers: [piGenVar("FIRST_USER_NAME")] },
  "user.password": {
    base: "User-Hostile-Secret-1",
    set: secret((c, ref) => (c.user.password = ref)),
    readers: [
      {
        consumer: CRYPT,
        async check(fx, v) {
          const hash = fx.secrets.userPasswordHash;
          const r = await execa("python3", ["-W", "ignore", "-c", "import crypt, sys; sys.stdout.write(crypt.crypt(sys.stdin.read(), sys.argv[1]))", hash], {
            input: v,
            timeout: 10_000,
          });
          return r.stdout === hash ? undefined : "libc's crypt does not give the rendered hash for the password";
        },
      },
    ],
  },
  "user.sshKeys[]": {
    base: KEY,
    at: KEY.length - 4,
    set: (c, v) => (c.user.sshKeys = [v]),
    readers: [
      piGenVar("PUBKEY_SSH_FIRST_USER"),
      {
        consumer: SSH_KEYS,
        async check(fx, v) {
          // The keys as pi-gen gets them, written to authorized_keys as its stage2 does.
          const keys = await execa("bash", ["-c", 'set -eu; . "$1"; printf "%s\\n" "$PUBKEY_SSH_FIRST_USER"', "bash", tempFile(fx.rendered.piGenConfig)], {
            timeout: 10_000,
          });
          const r = await execa("ssh-keygen", ["-l", "-f", tempFile(`${keys.stdout}\n`)], { timeout: 10_000, reject: false, encoding: "buffer" });
          // ssh-keygen shows bytes it deems unprintable as octal escapes (\342\200\250): decode them to compare.
          const shown = /^\d+ SHA256:\S+ (.*) \(ED25519\)$/.exec(Buffer.from(r.stdout).toString("latin1").trimEnd())?.[1];
          const comment =
            shown &&
            Buffer.from(
              shown.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))),
              "latin1",
            ).toString("utf8");
          return r.exitCode !== 0
            ? `ssh-keygen refused the key: ${Buffer.from(r.stderr).toString()}`
            : same("the key's comment", String(comment), v.split(" ").slice(2).join(" "));
        },
      },
    ],
  },
  "network.interface": {
    base: "eth0",
    set: (c, v) => (c.network.interface = v),
    readers: [keyfileValue("etc/NetworkManager/system-connections/pibake-lan.nmconnection", "connection.interface-name", "connection", "interface-name")],
  },
  "network.address": {
    base: "192.168.1.10/24",
    set: (c, v) => (c.network.address = v),
    readers: [keyfileValue("etc/NetworkManager/system-connections/pibake-lan.nmconnection", "ipv4.addresses", "ipv4", "address1", (v) => v)],
  },
  "network.gateway": {
    base: "192.168.1.1",
    set: (c, v) => (c.network.gateway = v),
    // NetworkManager writes the gateway after the address: address1=192.168.1.10/24,192.168.1.1.
    readers: [keyfileValue("etc/NetworkManager/system-connections/pibake-lan.nmconnection", "ipv4.gateway", "ipv4", "address1")],
  },
  "firewall.lan[]": { base: "10.20.0.0/16", set: (c, v) => (c.firewall = { lan: [v] }), readers: [nftLanSet(), fail2banIgnoreIp()] },
  "network.dns[]": {
    base: "9.9.9.9",
    set: (c, v) => (c.network.dns = [v]),
    readers: [keyfileValue("etc/NetworkManager/system-connections/pibake-lan.nmconnection", "ipv4.dns", "ipv4", "dns")],
  },
  "network.wifi.ssid": {
    base: "Home Net",
    set: (c, v) => (withWifi(c).ssid = v),
    readers: [keyfileValue("etc/NetworkManager/system-connections/pibake-wifi.nmconnection", "802-11-wireless.ssid", "wifi", "ssid")],
  },
  "network.wifi.passphrase": {
    base: "wifi-pass-123",
    set: secret((c, ref) => (withWifi(c).passphrase = ref)),
    readers: [
      {
        consumer: WPA,
        async check(fx, v) {
          const r = await execa("wpa_passphrase", [fx.model.network.wifi!.ssid, v], { timeout: 10_000, reject: false });
          const psk = /^\s*psk=([0-9a-f]{64})$/m.exec(r.stdout)?.[1];
          return psk === fx.secrets.wifiPsk ? undefined : `wpa_passphrase gives another PSK (${r.stderr.trim() || "different"})`;
        },
      },
    ],
  },
  "network.wifi.country": { base: "DE", set: (c, v) => (withWifi(c).country = v), readers: [piGenVar("WPA_COUNTRY")] },
  "mqtt.users[].name": {
    base: "sensors",
    set: (c, v) => (c.mqtt.users[0].name = v),
    readers: [
      mosquittoLogin(
        (v) => v,
        (_fx) => secretEnv.T_MQTT_SENSORS_PW,
      ),
    ],
  },
  "mqtt.users[].password": {
    base: "Mqtt-Hostile-Secret-2",
    set: secret((c, ref) => (c.mqtt.users[0].password = ref)),
    readers: [
      mosquittoLogin(
        () => "sensors",
        (_fx, v) => v,
      ),
    ],
  },
  "mqtt.users[].topics[].topic": {
    base: "home/sensors/temp",
    set: (c, v) => (c.mqtt.users[0].topics = [{ access: "readwrite", topic: v }]),
    readers: [
      mosquittoLogin(
        () => "sensors",
        () => secretEnv.T_MQTT_SENSORS_PW,
        (v) => v,
      ),
    ],
  },
  "tls.domain": {
    base: "home.freemyip.com",
    at: 2,
    set: (c, v) => (c.tls.domain = v),
    readers: [certificateName((v) => v.toLowerCase()), ddclientValue("host", (v) => v.toLowerCase())],
  },
  "tls.acme.email": {
    base: "me@example.org",
    set: (c, v) => ((c.tls.mode = "acme"), (c.tls.acme = { email: v })),
    readers: [scriptConstant("usr/local/lib/pibake/acme-certificate.sh", "EMAIL")],
  },
  "tls.acme.server": {
    base: "https://acme-staging-v02.api.letsencrypt.org/directory",
    set: (c, v) => ((c.tls.mode = "acme"), (c.tls.acme = { email: "me@example.org", server: v })),
    readers: [scriptConstant("usr/local/lib/pibake/acme-certificate.sh", "SERVER")],
  },
  "tls.extraNames[]": { base: "broker.lan", set: (c, v) => (c.tls.extraNames = [v]), readers: [certificateName((v) => v.toLowerCase())] },
  "ddns.token": { base: "DdnsToken5e6f7a8b", set: secret((c, ref) => (c.ddns.token = ref)), readers: [ddclientCredentials("token")] },
  "ddns.password": { base: "Ddns-Hostile-Secret-3", set: secret((c, ref) => (dyndns2(c).password = ref)), readers: [ddclientCredentials("password")] },
  "ddns.server": { base: "members.dyndns.org", set: (c, v) => (dyndns2(c).server = v), readers: [ddclientValue("server")] },
  "ddns.login": { base: "home-user", set: (c, v) => (dyndns2(c).login = v), readers: [ddclientCredentials("login")] },
  "ddns.hostname": { base: "mqtt.example.org", set: (c, v) => (dyndns2(c).hostname = v), readers: [ddclientValue("host", (v) => v.toLowerCase())] },
  "ddns.ipLookup": { base: "https://api.ipify.org/", set: (c, v) => (c.ddns.ipLookup = v), readers: [ddclientValue("webv4")] },
  "nodeRed.admin.user": {
    base: "admin",
    set: (c, v) => (c.nodeRed = { admin: { user: v } }),
    readers: [
      {
        consumer: NODE,
        async check(fx, v) {
          const settings = tempFile(fx.overlayText(`home/${fx.model.user.name}/.node-red/settings.js`));
          const r = await execa(process.execPath, ["-e", "process.stdout.write(require(process.argv[1]).adminAuth.users[0].username)", settings], {
            timeout: 10_000,
            reject: false,
          });
          return r.exitCode === 0 ? same("Node's adminAuth user", r.stdout, v) : `Node could not load settings.js: ${r.stderr}`;
        },
      },
    ],
  },
  "nodeRed.admin.password": {
    base: "NodeRed-Hostile-Secret-4",
    set: secret((c, ref) => (c.nodeRed = { admin: { password: ref } })),
    readers: [
      {
        consumer: BCRYPT,
        async check(fx, v) {
          const settings = tempFile(fx.overlayText(`home/${fx.model.user.name}/.node-red/settings.js`));
          const r = await execa(process.execPath, ["-e", "process.stdout.write(require(process.argv[1]).adminAuth.users[0].password)", settings], {
            timeout: 10_000,
          });
          return (await bcrypt.compare(v, r.stdout)) ? undefined : "bcrypt does not accept the password against settings.js's hash";
        },
      },
    ],
  },
  "nodeRed.mqttUser": {
    base: "sensors",
    set: (c, v) => {
      c.mqtt.users[0].name = v;
      c.mqtt.users[0].topics = [{ access: "readwrite", topic: "home/#" }];
      c.nodeRed = { mqttUser: v };
    },
    readers: [
      mosquittoLogin(
        (v) => v,
        () => secretEnv.T_MQTT_SENSORS_PW,
      ),
    ],
  },
  "nodeRed.exampleTopic": {
    base: "home/example",
    set: (c, v) => {
      c.nodeRed = { exampleTopic: v };
      c.mqtt.users[1].topics = [{ access: "readwrite", topic: "#" }];
    },
    readers: [
      {
        consumer: NODE,
        async check(fx, v) {
          const flows = JSON.parse(fx.overlayText(`home/${fx.model.user.name}/.node-red/flows.json`)) as { type: string; topic?: string }[];
          return same("the flow's topic", String(flows.find((n) => n.type === "mqtt in")?.topic), v);
        },
      },
      mosquittoLogin(
        () => "nodered",
        (fx) => passwordOf("nodered")(fx),
        (v) => v,
        { username: "phone", password: secretEnv.T_MQTT_PHONE_PW },
      ),
    ],
  },
  "updates.reboot.time": {
    base: "04:00",
    set: (c, v) => (c.updates = { reboot: { time: v } }),
    readers: [
      {
        consumer: APT,
        async check(fx, v) {
          // apt's own parser reads the rendered file as its main config file (APT_CONFIG).
          const file = tempFile(fx.overlayText("etc/apt/apt.conf.d/52pibake-unattended-upgrades"));
          const r = await execa("apt-config", ["dump", "--format", "%f\t%v%n"], { env: { APT_CONFIG: file }, timeout: 10_000, reject: false });
          if (r.exitCode !== 0) return `apt-config refused the rendered file: ${r.stderr}`;
          const line = r.stdout.split("\n").find((l) => l.startsWith("Unattended-Upgrade::Automatic-Reboot-Time\t"));
          return same("Unattended-Upgrade::Automatic-Reboot-Time", String(line?.split("\t")[1]), v);
        },
      },
    ],
  },
  "nodeRed.version": {
    base: "4.1.15",
    set: (c, v) => (c.nodeRed = { version: v }),
    readers: [
      {
        consumer: BASH,
        async check(fx, v) {
          const line = fx
            .overlayText("usr/local/lib/pibake/firstboot.sh")
            .split("\n")
            .find((l) => l.startsWith("readonly NODE_RED_VERSION="))!;
          const r = await execa("bash", ["-c", `${line}; printf '%s' "$NODE_RED_VERSION"`], { timeout: 10_000 });
          return same("firstboot.sh's NODE_RED_VERSION", r.stdout, v);
        },
      },
    ],
  },
};

/** Strings in the config that never reach the Pi, and why. */
const HOST_ONLY: Record<string, string> = {
  $schema: "read by editors only",
  "image.baseStages[]": "pi-gen stage directories on the build host",
  "image.raspiosDate": "chooses the official image on the build host (a date, checked by the schema)",
};
const SECRET_FIELDS = Object.keys(FIELDS).filter((f) =>
  ["user.password", "network.wifi.passphrase", "mqtt.users[].password", "ddns.token", "ddns.password", "nodeRed.admin.password"].includes(f),
);
for (const f of SECRET_FIELDS) {
  HOST_ONLY[`${f}.env`] = "the name of an environment variable on the build host";
  HOST_ONLY[`${f}.file`] = "the path of a file on the build host";
}

/** Every free-text string of the config's JSON Schema (enums and constants are not free text), with [] for list items. */
function stringFields(schema: Record<string, any>, at = ""): string[] {
  const out: string[] = [];
  if (schema.type === "string" && !schema.enum && schema.const === undefined) out.push(at);
  for (const [k, sub] of Object.entries((schema.properties ?? {}) as Record<string, any>)) out.push(...stringFields(sub, at ? `${at}.${k}` : k));
  if (schema.items) out.push(...stringFields(schema.items, `${at}[]`));
  for (const alt of [...(schema.anyOf ?? []), ...(schema.oneOf ?? [])]) out.push(...stringFields(alt, at));
  return [...new Set(out)];
}

/** The concrete JSON path for messages: the first item of each list. */
const concrete = (field: string) => field.replaceAll("[]", "[0]");

/** The test config with `v` in field `f`, and the environment its secret references read. */
function configWith(f: Field, v: string): { config: TestConfig; env: Record<string, string> } {
  const config = validConfig();
  const env: Record<string, string> = { ...secretEnv, T_WIFI_PW: "wifi-pass-123" };
  f.set(config, v, env);
  return { config, env };
}

function hostileValues(f: Field): string[] {
  const at = f.at ?? Math.floor(f.base.length / 2);
  const specials = [...new Set([...EVERYWHERE, ...f.readers.flatMap((r) => r.consumer.specials)])];
  const values = specials.map((s) => f.base.slice(0, at) + s + f.base.slice(at));
  // Blanks and a backslash at either end, where parsers trim or continue lines.
  for (const s of [" ", "\t", "\\"]) values.push(s + f.base, f.base + s);
  return [...new Set(values)];
}

describe("hostile values in every string field: refused naming the field, or read back unchanged by the real consumer", () => {
  it("knows where every string of the config's schema goes", () => {
    const inSchema = stringFields(configJsonSchema()).sort();
    expect(inSchema, "a string field of the config is missing from FIELDS or HOST_ONLY: say which file it reaches and which program reads it").toEqual(
      [...Object.keys(FIELDS), ...Object.keys(HOST_ONLY)].sort(),
    );
  });

  it.each(Object.keys(FIELDS))(
    "%s",
    async (field) => {
      const f = FIELDS[field]!;
      const problems: string[] = [];
      let accepted = 0;
      for (const value of hostileValues(f)) {
        const { config, env } = configWith(f, value);
        const file = tempFile(JSON.stringify(config));
        try {
          loadConfig(file, env);
        } catch (err) {
          if (!(err instanceof ConfigError)) {
            problems.push(`${JSON.stringify(value)}: not a config error but ${(err as Error).message}`);
          } else if (!err.issues.some((i) => i.path === concrete(field))) {
            problems.push(`${JSON.stringify(value)}: refused, but not naming ${concrete(field)}: ${err.message}`);
          }
          continue;
        }
        accepted++;
        const fx = await renderFixture({ config, env });
        try {
          for (const reader of f.readers) {
            const problem = await reader.check(fx, value);
            if (problem) problems.push(`${JSON.stringify(value)} → ${reader.consumer.name}: ${problem}`);
          }
        } finally {
          fx.cleanup();
        }
      }
      // The plain value must get through, or the readers were never exercised; and each reader
      // must notice a value other than the one rendered, or it could not fail.
      const fx = await renderFixture(configWith(f, f.base));
      try {
        for (const reader of f.readers) {
          const problem = await reader.check(fx, f.base);
          if (problem) problems.push(`the plain value ${JSON.stringify(f.base)} → ${reader.consumer.name}: ${problem}`);
          if ((await reader.check(fx, `${f.base}x`)) === undefined)
            problems.push(`${reader.consumer.name} did not notice that ${JSON.stringify(f.base)} was rendered, not ${JSON.stringify(`${f.base}x`)}`);
        }
      } finally {
        fx.cleanup();
      }
      expect(problems, `${problems.length} problem(s) with ${field} (${accepted} hostile values accepted)`).toEqual([]);
    },
    240_000,
  );
});
