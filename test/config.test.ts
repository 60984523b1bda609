import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pibake, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { loadConfig } from "../src/config/load.js";
import { ConfigError } from "../src/errors.js";

type Mutate = (c: Record<string, any>) => void;

/** JSON.stringify overflows on very deep values; the deep ones in this file are lists of lists of a string. */
function stringifyDeep(value: unknown): string {
  const parts: string[] = [];
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === "symbol") parts.push(v.description!);
    else if (Array.isArray(v) && v.length === 1 && Array.isArray(v[0])) stack.push(Symbol("]"), v[0], Symbol("["));
    else if (Array.isArray(v) || v === null || typeof v !== "object") parts.push(JSON.stringify(v));
    else {
      const entries = Object.entries(v);
      stack.push(Symbol("}"));
      entries.reverse().forEach(([k, e], i) => stack.push(e, Symbol(`${JSON.stringify(k)}:`), ...(i < entries.length - 1 ? [Symbol(",")] : [])));
      stack.push(Symbol("{"));
    }
  }
  return parts.join("");
}

/** [what is broken, how, the JSON path the message must name, words it must say] */
const broken: [string, Mutate, string, RegExp][] = [
  ["no image section", (c) => delete c.image, "image", /is required/],
  ["image name with spaces", (c) => (c.image.name = "My Broker"), "image.name", /"My Broker" is not an image name/],
  ["unknown release", (c) => (c.image.release = "buster"), "image.release", /"buster" is not a supported release: "trixie" or "bookworm"/],
  ["unknown arch", (c) => (c.image.arch = "x86_64"), "image.arch", /"x86_64" is not a supported architecture/],
  ["hostname starting with a dash", (c) => (c.image.hostname = "-pi"), "image.hostname", /is not a host name/],
  ["time zone with spaces", (c) => (c.image.timezone = "Central Europe"), "image.timezone", /is not a time zone name/],
  ["locale in words", (c) => (c.image.locale = "english"), "image.locale", /is not a locale/],
  ["keymap in capitals", (c) => (c.image.keyboard.keymap = "GERMAN"), "image.keyboard.keymap", /is not an XKB layout code/],
  ["base stages as one string", (c) => (c.image.baseStages = "my-base"), "image.baseStages", /is not a list of pi-gen stage directories/],
  ["an empty base stage", (c) => (c.image.baseStages = ["stage-a", ""]), "image.baseStages[1]", /is empty: give a stage directory/],
  ["unknown field", (c) => (c.image.colour = "red"), "image", /unknown field "colour"; expected name, release/],
  ["user name in capitals", (c) => (c.user.name = "Admin"), "user.name", /"Admin" is not a Linux user name/],
  ["no user password", (c) => delete c.user.password, "user.password", /is required/],
  [
    "password from an unset variable",
    (c) => (c.user.password = { env: "PIBAKE_TEST_UNSET_VAR" }),
    "user.password",
    /environment variable PIBAKE_TEST_UNSET_VAR is not set/,
  ],
  ["password from a missing file", (c) => (c.user.password = { file: "no-such-secret.txt" }), "user.password", /file no-such-secret.txt does not exist/],
  ["password too short", (c) => (c.user.password = { env: "T_SHORT" }), "user.password", /is shorter than 8 characters/],
  ["secret reference of the wrong shape", (c) => (c.user.password = { vault: "x" }), "user.password", /is not a secret: give a string/],
  ["not an SSH key", (c) => (c.user.sshKeys = ["my laptop key"]), "user.sshKeys[0]", /is not an SSH public key/],
  ["no key and no password login", (c) => (c.user.sshKeys = []), "user.sshKeys", /nobody could log in over SSH/],
  ["passwordSsh as a word", (c) => (c.user.passwordSsh = "no"), "user.passwordSsh", /"no" is not true or false/],
  ["octet above 255", (c) => (c.network.address = "192.168.1.300/24"), "network.address", /"192\.168\.1\.300\/24" is not an IPv4 address with a prefix length/],
  ["address without prefix", (c) => (c.network.address = "192.168.1.10"), "network.address", /is not an IPv4 address with a prefix length/],
  ["gateway outside the subnet", (c) => (c.network.gateway = "10.0.0.1"), "network.gateway", /10\.0\.0\.1 is outside 192\.168\.1\.0\/24 \(network\.address\)/],
  ["the network address itself", (c) => (c.network.address = "192.168.1.0/24"), "network.address", /is the network address of 192\.168\.1\.0\/24/],
  ["DNS server with three octets", (c) => (c.network.dns = ["1.1.1"]), "network.dns[0]", /"1\.1\.1" is not an IPv4 address/],
  ["empty DNS list", (c) => (c.network.dns = []), "network.dns", /is empty: give at least one DNS server/],
  ["interface name with a space", (c) => (c.network.interface = "eth 0"), "network.interface", /is not a network interface name/],
  ["Wi-Fi interface without Wi-Fi", (c) => (c.network.interface = "wlan0"), "network.wifi", /is required when network.interface is "wlan0"/],
  [
    "country in words",
    (c) => (c.network.wifi = { ssid: "Home", passphrase: { env: "T_WIFI_PW" }, country: "Germany" }),
    "network.wifi.country",
    /is not a two-letter country code/,
  ],
  [
    "Wi-Fi passphrase too short",
    (c) => (c.network.wifi = { ssid: "Home", passphrase: { env: "T_SHORT" }, country: "DE" }),
    "network.wifi.passphrase",
    /is not 8 to 63 characters long/,
  ],
  ["port out of range", (c) => (c.mqtt.lanPort = 70000), "mqtt.lanPort", /70000 is not a port number/],
  ["port as a string", (c) => (c.mqtt.tlsPort = "8883"), "mqtt.tlsPort", /"8883" is not a port number/],
  ["the same port twice", (c) => (c.mqtt.tlsPort = 1883), "mqtt.tlsPort", /1883 is also mqtt.lanPort/],
  ["no MQTT users", (c) => (c.mqtt.users = []), "mqtt.users", /is empty: the broker allows no anonymous access/],
  ["MQTT user name with a colon", (c) => (c.mqtt.users[1].name = "ph:one"), "mqtt.users[1].name", /"ph:one" is not an MQTT user name/],
  ["two MQTT users with one name", (c) => (c.mqtt.users[1].name = "sensors"), "mqtt.users[1].name", /"sensors" is already used by mqtt.users\[0\]/],
  ["unknown access kind", (c) => (c.mqtt.users[0].topics[0].access = "all"), "mqtt.users[0].topics[0].access", /"all" is not an access kind/],
  ["'#' in the middle of a filter", (c) => (c.mqtt.users[0].topics[0].topic = "home/#/x"), "mqtt.users[0].topics[0].topic", /is not an MQTT topic filter/],
  ["domain with an underscore", (c) => (c.tls.domain = "my_home.freemyip.com"), "tls.domain", /"my_home\.freemyip\.com" is not a valid DNS name/],
  ["domain without a dot", (c) => (c.tls.domain = "broker"), "tls.domain", /is not a fully qualified DNS name/],
  ["extra name with a space", (c) => (c.tls.extraNames = ["my broker"]), "tls.extraNames[0]", /is neither a DNS name nor an IPv4 address/],
  ["unknown DDNS provider", (c) => (c.ddns.provider = "noip"), "ddns.provider", /is not a DDNS provider: "freemyip" or "dyndns2"/],
  ["freemyip for a name elsewhere", (c) => (c.tls.domain = "home.example.com"), "tls.domain", /is not a freemyip.com name/],
  ["update interval too short", (c) => (c.ddns.interval = 10), "ddns.interval", /10 is too short: at least 60 seconds/],
  [
    "DDNS token from an unset variable",
    (c) => (c.ddns.token = { env: "PIBAKE_TEST_UNSET_TOKEN" }),
    "ddns.token",
    /environment variable PIBAKE_TEST_UNSET_TOKEN is not set/,
  ],
  ["a system account as the first user", (c) => (c.user.name = "root"), "user.name", /"root" is a system account or group of Raspberry Pi OS/],
  ["a systemd account as the first user", (c) => (c.user.name = "systemd-network"), "user.name", /is a system account/],
  ["an existing group as the first user", (c) => (c.user.name = "video"), "user.name", /is a system account or group/],
  [
    "an address with an octet above 255 as an extra name",
    (c) => (c.tls.extraNames = ["192.168.1.300"]),
    "tls.extraNames[0]",
    /"192\.168\.1\.300" is not an IPv4 address .* all-numeric names are not DNS names/,
  ],
  ["a name whose last label is all digits", (c) => (c.tls.extraNames = ["broker.123"]), "tls.extraNames[0]", /is neither a DNS name nor an IPv4 address/],
  ["an all-numeric domain", (c) => (c.tls.domain = "home.freemyip.42"), "tls.domain", /is not a valid DNS name/],
  [
    "a NUL byte in an SSH key comment",
    (c) => (c.user.sshKeys = [c.user.sshKeys[0].replace("test@host", "test\u0000host")]),
    "user.sshKeys[0]",
    /is not an SSH public key/,
  ],
  [
    "an escape character in an SSH key comment",
    (c) => (c.user.sshKeys = [c.user.sshKeys[0].replace("test@host", "test\u001b[2Jhost")]),
    "user.sshKeys[0]",
    /is not an SSH public key/,
  ],
  [
    "a Node-RED password longer than bcrypt reads",
    (c) => (c.nodeRed = { admin: { password: { env: "T_LONG_PW" } } }),
    "nodeRed.admin.password",
    /longer than 72 bytes, the most that bcrypt/,
  ],
  [
    "a Node-RED password of 72 characters but more bytes",
    (c) => (c.nodeRed = { admin: { password: { env: "T_LONG_UTF8_PW" } } }),
    "nodeRed.admin.password",
    /longer than 72 bytes/,
  ],
  ["a value nested 5000 deep", (c) => (c.image.name = nested(5000)), "image.name[0][0]…", /is nested more than 32 levels deep/],
  ["LAN networks as one string", (c) => (c.firewall = { lan: "192.168.1.0/24" }), "firewall.lan", /is not a list of IPv4 networks/],
  [
    "a LAN network given by a host address",
    (c) => (c.firewall = { lan: ["192.168.1.10/24"] }),
    "firewall.lan[0]",
    /has host bits set: give the network's own address/,
  ],
  [
    "a LAN network without a prefix length",
    (c) => (c.firewall = { lan: ["192.168.1.0"] }),
    "firewall.lan[0]",
    /"192\.168\.1\.0" is not an IPv4 network with a prefix length/,
  ],
  ["the whole Internet as the LAN", (c) => (c.firewall = { lan: ["0.0.0.0/0"] }), "firewall.lan[0]", /is wider than a \/8/],
  ["an IPv6 LAN network", (c) => (c.firewall = { lan: ["fd00::/8"] }), "firewall.lan[0]", /is not an IPv4 network/],
  ["no LAN network", (c) => (c.firewall = { lan: [] }), "firewall.lan", /is empty: give at least one network, or leave firewall.lan out/],
  ["firewall on as a word", (c) => (c.firewall = { enabled: "yes" }), "firewall.enabled", /"yes" is not true or false/],
  ["MQTT on SSH's port", (c) => (c.mqtt.tlsPort = 22), "mqtt.tlsPort", /22 is SSH's port/],
  ["dyndns2 without a server", (c) => (c.ddns = { provider: "dyndns2", login: "me", password: { env: "T_DDNS_TOKEN" } }), "ddns.server", /is required/],
  [
    "WebSockets on the MQTT TLS port",
    (c) => (c.mqtt.websockets = { tlsPort: 8883 }),
    "mqtt.websockets.tlsPort",
    /8883 is also mqtt.tlsPort: each listener needs a port of its own/,
  ],
  ["LAN WebSockets on the MQTT LAN port", (c) => (c.mqtt.websockets = { lan: true, lanPort: 1883 }), "mqtt.websockets.lanPort", /1883 is also mqtt.lanPort/],
  [
    "LAN WebSockets on the TLS WebSockets port",
    (c) => (c.mqtt.websockets = { lan: true, lanPort: 8884 }),
    "mqtt.websockets.lanPort",
    /8884 is also mqtt.websockets.tlsPort/,
  ],
  [
    "Node-RED on the WebSockets port",
    (c) => ((c.mqtt.websockets = {}), (c.nodeRed = { port: 8884 })),
    "nodeRed.port",
    /8884 is also mqtt.websockets.tlsPort: Node-RED needs a port of its own/,
  ],
  ["WebSockets port out of range", (c) => (c.mqtt.websockets = { tlsPort: 0 }), "mqtt.websockets.tlsPort", /0 is not a port number/],
  ["WebSockets lan as a string", (c) => (c.mqtt.websockets = { lan: "yes" }), "mqtt.websockets.lan", /"yes" is not true or false/],
  ["unknown WebSockets field", (c) => (c.mqtt.websockets = { port: 9001 }), "mqtt.websockets", /unknown field "port"; expected tlsPort, lan, lanPort/],
  ["autosave every 5 seconds", (c) => (c.mqtt.autosaveInterval = 5), "mqtt.autosaveInterval", /5 is too short: at least 60 seconds/],
  ["autosave as a fraction", (c) => (c.mqtt.autosaveInterval = 300.5), "mqtt.autosaveInterval", /is not a whole number of seconds/],
  [
    "autosave without persistence",
    (c) => ((c.mqtt.persistence = false), (c.mqtt.autosaveInterval = 600)),
    "mqtt.autosaveInterval",
    /is set while mqtt.persistence is false/,
  ],
  ["reboot time without a leading zero", (c) => (c.updates = { reboot: { time: "4:00" } }), "updates.reboot.time", /"4:00" is not a time of day as HH:MM/],
  ["reboot time 24:00", (c) => (c.updates = { reboot: { time: "24:00" } }), "updates.reboot.time", /is not a time of day as HH:MM/],
  ["reboot time with seconds", (c) => (c.updates = { reboot: { time: "04:00:00" } }), "updates.reboot.time", /is not a time of day as HH:MM/],
  ["reboot without a time", (c) => (c.updates = { reboot: {} }), "updates.reboot.time", /is required: the time of day to reboot at/],
  ["reboot with updates off", (c) => (c.updates = { enabled: false, reboot: { time: "04:00" } }), "updates.reboot", /is set while updates.enabled is false/],
  ["unknown TLS mode", (c) => (c.tls.mode = "letsencrypt"), "tls.mode", /"letsencrypt" is not a TLS mode: "own-ca" or "acme"/],
  ["acme without its settings", (c) => (c.tls.mode = "acme"), "tls.acme.email", /is required when tls.mode is "acme"/],
  ["acme without an address", (c) => ((c.tls.mode = "acme"), (c.tls.acme = {})), "tls.acme.email", /is required: the address the CA writes to/],
  [
    "acme address without a domain",
    (c) => ((c.tls.mode = "acme"), (c.tls.acme = { email: "me@localhost" })),
    "tls.acme.email",
    /"me@localhost" is not an e-mail address/,
  ],
  [
    "acme server over http",
    (c) => ((c.tls.mode = "acme"), (c.tls.acme = { email: "me@example.org", server: "http://ca.example/dir" })),
    "tls.acme.server",
    /is not an https URL of an ACME directory/,
  ],
  ["acme settings with the own CA", (c) => (c.tls.acme = { email: "me@example.org" }), "tls.acme", /is set while tls.mode is "own-ca"/],
  [
    "acme without ddns",
    (c) => ((c.tls.mode = "acme"), (c.tls.acme = { email: "me@example.org" }), delete c.ddns),
    "tls.mode",
    /"acme" needs ddns.provider "freemyip" \(there is no ddns section\): the certificate is obtained through a DNS-01 challenge/,
  ],
  [
    "acme with dyndns2",
    (c) => (
      (c.tls.mode = "acme"),
      (c.tls.acme = { email: "me@example.org" }),
      (c.tls.domain = "home.example.org"),
      (c.ddns = { provider: "dyndns2", server: "members.dyndns.org", login: "me", password: c.ddns.token })
    ),
    "tls.mode",
    /"acme" needs ddns.provider "freemyip" \(ddns.provider is "dyndns2", which has no way to set a TXT record\)/,
  ],
  [
    "acme for another freemyip name",
    (c) => ((c.tls.mode = "acme"), (c.tls.acme = { email: "me@example.org" }), (c.ddns.hostname = "other.freemyip.com")),
    "tls.mode",
    /"acme" needs ddns.hostname to be tls.domain \("home.freemyip.com"\)/,
  ],
];

/** A list inside a list… `depth` times: JSON.stringify and recursive reporters overflow on it. */
function nested(depth: number): unknown {
  let v: unknown = "x";
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

const env = {
  ...secretEnv,
  T_SHORT: "short",
  T_WIFI_PW: "wifi-pass-123",
  T_LONG_PW: "Long-Node-RED-Pw-".padEnd(73, "x"),
  T_LONG_UTF8_PW: "Ünïcödé-Pw-".padEnd(72, "é"),
};

describe("bad configs", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);

  it("has a table of at least 30 cases", () => {
    expect(broken.length).toBeGreaterThanOrEqual(30);
  });

  it.each(broken)("%s: exits 2 naming the field, writes nothing, prints no secret", async (name, mutate, field, words) => {
    const c = validConfig();
    mutate(c);
    const slug = name.replace(/\W+/g, "-");
    const cfg = path.join(tmp.dir, `${slug}.json`);
    writeFileSync(cfg, stringifyDeep(c));
    const out = path.join(tmp.dir, `${slug}-out`);
    const r = await pibake(["render", cfg, "--out", out, "--state", path.join(tmp.dir, `${slug}-state`)], { env });
    expect(r.exitCode).toBe(2);
    const line = r.stderr.split("\n").find((l) => l.trim().startsWith(`${field}: `));
    expect(line, `stderr names ${field}:\n${r.stderr}`).toBeDefined();
    expect(line).toMatch(words);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(existsSync(out)).toBe(false);
    for (const secret of Object.values(env)) if (secret.length >= 8) expect(r.stderr + r.stdout).not.toContain(secret);
  });

  it("reports every problem at once", async () => {
    const c = validConfig();
    c.network.address = "192.168.1.300/24";
    c.mqtt.lanPort = 0;
    c.tls.domain = "nope";
    const cfg = writeJson(path.join(tmp.dir, "many.json"), c);
    const r = await pibake(["validate", cfg], { env });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/3 problems/);
    expect(r.stderr).toMatch(/network\.address: /);
    expect(r.stderr).toMatch(/mqtt\.lanPort: /);
    expect(r.stderr).toMatch(/tls\.domain: /);
  });

  it("says where a JSON syntax error is", async () => {
    const cfg = path.join(tmp.dir, "syntax.json");
    writeFileSync(cfg, '{\n  "image": {\n    "name": "x",\n  }\n}\n');
    const r = await pibake(["validate", cfg]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/is not valid JSON: line 4, column 3: expected a field name in double quotes/);
  });

  // JSON.parse's own messages quote a slice of the file, e.g. `Unexpected token 'h', ..."assword": hunter2sec"...`.
  it.each([
    ["an unquoted password", '{\n  "user": {\n    "password": Unquoted-Secret-9x\n  }\n}\n', "Unquoted-Secret-9x", /line 3, column 17: unexpected character/],
    [
      "a trailing comma after a password",
      '{ "user": { "password": "Trailing-Secret-7y", } }',
      "Trailing-Secret-7y",
      /line 1, column 47: expected a field name/,
    ],
    ["a password with a raw tab", '{ "user": { "password": "Tab-Secret\t-5z" } }', "Tab-Secret", /line 1, column 25: a string holds a raw control character/],
    ["a password with a bad escape", '{ "user": { "password": "Esc-Secret-\\q-4w" } }', "Esc-Secret", /line 1, column 25: a string has an unknown escape/],
    ["a missing colon", '{ "user": { "password" "Colon-Secret-3v" } }', "Colon-Secret", /line 1, column 24: expected ':'/],
    [
      "a comment",
      '{ "user": { "password": "Comment-Secret-2u" } // Comment-Secret-2u\n }',
      "Comment-Secret",
      /expected ',' between two values|JSON has no comments/,
    ],
    ["an unclosed string", '{ "user": { "password": "Open-Secret-1t', "Open-Secret", /line 1, column 25: a string is not closed/],
  ])("a JSON error with %s names line and column and quotes nothing of the file, with --debug too", async (name, text, secret, words) => {
    const cfg = path.join(tmp.dir, `json-${name.replace(/\W+/g, "-")}.json`);
    writeFileSync(cfg, text);
    for (const args of [
      ["validate", cfg],
      ["validate", cfg, "--debug"],
      ["render", cfg, "--out", path.join(tmp.dir, "json-out"), "--debug"],
    ]) {
      const r = await pibake(args);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(/is not valid JSON: /);
      expect(r.stderr).toMatch(words);
      expect(r.stderr + r.stdout).not.toContain(secret);
    }
  });

  it("says which file or variable each secret comes from (file references may leave the config's directory)", async () => {
    const secrets = tempDir("pibake-elsewhere-");
    try {
      const c = validConfig();
      writeFileSync(path.join(secrets.dir, "phone.txt"), "Phone-File-Secret-8s\n");
      c.mqtt.users[1].password = { file: path.relative(tmp.dir, path.join(secrets.dir, "phone.txt")) };
      const cfg = writeJson(path.join(tmp.dir, "origins.json"), c);
      const r = await pibake(["validate", cfg], { env });
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toContain(`mqtt.users[1].password: from file ${path.join(secrets.dir, "phone.txt")}`);
      expect(r.stdout).toContain("user.password: from environment variable T_USER_PW");
      expect(r.stdout + r.stderr).not.toContain("Phone-File-Secret-8s");
    } finally {
      secrets.cleanup();
    }
  });

  it("says when the config file does not exist", async () => {
    const r = await pibake(["validate", path.join(tmp.dir, "absent.json")]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/absent\.json does not exist/);
  });

  it("never echoes a literal secret, even in an error", async () => {
    const c = validConfig();
    c.user.password = "Literal-Secret-abc123";
    c.network.address = "bad";
    const cfg = writeJson(path.join(tmp.dir, "literal.json"), c);
    const r = await pibake(["validate", cfg], { env });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).not.toContain("Literal-Secret-abc123");
  });
});

describe("good configs", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);

  it("resolves env and file references and warns about literal secrets", () => {
    const c = validConfig();
    c.mqtt.users[1].password = { file: "phone.txt" };
    c.ddns.token = "Literal-Token-123";
    writeFileSync(path.join(tmp.dir, "phone.txt"), "from-a-file-456\n");
    const cfg = writeJson(path.join(tmp.dir, "ok.json"), c);
    const { model, warnings } = loadConfig(cfg, { ...secretEnv });
    expect(model.mqtt.users[1]!.password.reveal()).toBe("from-a-file-456");
    expect(model.user.password.reveal()).toBe(secretEnv.T_USER_PW);
    expect(warnings.join("\n")).toMatch(/ddns\.token is written in the config in plain text/);
    // Secrets never show themselves.
    expect(JSON.stringify(model)).not.toContain("from-a-file-456");
    expect(String(model.user.password)).toBe("***");
  });

  it("applies defaults and derives the certificate's names", () => {
    const c = validConfig();
    delete c.image.release;
    delete c.image.arch;
    delete c.network.interface;
    delete c.mqtt.lanPort;
    const cfg = writeJson(path.join(tmp.dir, "defaults.json"), c);
    const { model } = loadConfig(cfg, { ...secretEnv });
    expect(model.image.release).toBe("trixie");
    expect(model.image.arch).toBe("arm64");
    expect(model.network.interface).toBe("eth0");
    expect(model.mqtt.lanPort).toBe(1883);
    expect(model.tls.dnsNames).toEqual(["home.freemyip.com", "broker.lan", "broker.local"]);
    expect(model.tls.ipAddresses).toEqual(["192.168.1.10"]);
    expect(model.mqtt.autosaveInterval).toBe(300);
    expect(model.mqtt.websockets).toBeUndefined();
    expect(model.updates).toEqual({});
  });

  it("models tls.mode: no ACME by default; with acme, Let's Encrypt's production CA unless another is named", () => {
    expect(loadConfig(writeJson(path.join(tmp.dir, "own-ca.json"), validConfig()), { ...secretEnv }).model.tls.acme).toBeUndefined();
    const c = validConfig();
    c.tls.mode = "acme";
    c.tls.acme = { email: "me@example.org" };
    expect(loadConfig(writeJson(path.join(tmp.dir, "acme.json"), c), { ...secretEnv }).model.tls.acme).toEqual({
      email: "me@example.org",
      server: "https://acme-v02.api.letsencrypt.org/directory",
    });
    c.tls.acme.server = "https://acme-staging-v02.api.letsencrypt.org/directory";
    expect(loadConfig(writeJson(path.join(tmp.dir, "staging.json"), c), { ...secretEnv }).model.tls.acme?.server).toBe(
      "https://acme-staging-v02.api.letsencrypt.org/directory",
    );
  });

  it("models WebSockets (lanPort only when lan is true) and updates (absent when off)", () => {
    const c = validConfig();
    c.mqtt.websockets = { tlsPort: 9443, lanPort: 9001 };
    c.updates = { reboot: { time: "03:30" } };
    const model = loadConfig(writeJson(path.join(tmp.dir, "ws.json"), c), { ...secretEnv }).model;
    expect(model.mqtt.websockets).toEqual({ tlsPort: 9443 });
    expect(model.updates).toEqual({ rebootTime: "03:30" });
    c.mqtt.websockets = { lan: true };
    c.updates = { enabled: false };
    const model2 = loadConfig(writeJson(path.join(tmp.dir, "ws2.json"), c), { ...secretEnv }).model;
    expect(model2.mqtt.websockets).toEqual({ tlsPort: 8884, lanPort: 1884 });
    expect(model2.updates).toBeUndefined();
  });

  it("throws ConfigError (exit code 2) in-process too", () => {
    const c = validConfig();
    c.mqtt.users = [];
    const cfg = writeJson(path.join(tmp.dir, "bad.json"), c);
    expect(() => loadConfig(cfg, { ...secretEnv })).toThrow(ConfigError);
  });

  it("validates the shipped example", async () => {
    const r = await pibake(["validate", "examples/broker.json"], {
      env: {
        PIBAKE_USER_PASSWORD: "example-pass-1",
        PIBAKE_MQTT_SENSORS_PASSWORD: "example-pass-2",
        FREEMYIP_TOKEN: "exampletoken",
        PIBAKE_MQTT_PHONE_PASSWORD: "x",
      },
    });
    // The example reads the phone password from a file that users create (examples/secrets/ is not committed).
    expect(r.stderr + r.stdout).toMatch(/is valid|mqtt\.users\[1\]\.password: file secrets\/mqtt-phone\.txt does not exist/);
  });
});
