/**
 * The rendered /etc/ddclient.conf read by the real ddclient, for both
 * providers: no warnings about the config, and the values ddclient parsed are
 * the intended ones. `-noexec` makes ddclient skip every network connection
 * (it prints what it would send instead), so nothing leaves the machine; the
 * warnings that only come from the missing IP address are expected.
 * The token/password appears in ddclient's verbose output: everything this
 * test prints or asserts on is redacted first.
 *
 * Then every value pibake writes there (login, password, token, server, host
 * name, IP lookup URL) with each character class special to ddclient: pibake
 * refuses it naming the field, or ddclient reads it back unchanged with no
 * keyword added (the login "me,usev4=cmdv4,cmdv4=<program>" once ran <program>).
 */
import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config/load.js";
import { ConfigError } from "../src/errors.js";
import {
  baseConfig,
  DEFAULT_SECRET_ENV,
  redactAll,
  removeAllFixtures,
  renderFixture,
  tempDir,
  type Fixture,
  type TestConfig,
} from "./helpers/render-fixture.js";
import { dumped, runDdclient, type DdclientRun } from "./helpers/ddclient.js";

afterAll(() => removeAllFixtures());

/**
 * Lines that say something is wrong, minus those that -noexec alone causes:
 * with no reply from the IP lookup there is no address, so ddclient says it
 * could not determine one, perl notes the undefined address, and the update "fails".
 */
function configComplaints(output: string, host: string, server: string): string[] {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const expected = [
    new RegExp(`^WARNING:\\s+${esc(host)}: unable to determine IPv4 address with strategy usev4=webv4$`),
    /^Use of uninitialized value \$_\[\d+\] in sprintf at \S*ddclient line \d+\.$/,
    new RegExp(`^FAILED:\\s+updating ${esc(host)}: Could not connect to ${esc(server)}\\.$`),
  ];
  return (
    output
      .split("\n")
      // The -debug dump of parsed settings (names like min-error-interval) is data, not a complaint.
      .filter((l) => !/^((opt|globals|config|cache)\{|DEBUG:)/.test(l))
      .filter((l) => /^(WARNING|FAILED|FATAL|ERROR|CRITICAL)|warning|error|invalid|unrecognized|deprecated|Use of uninitialized|at \S+ line \d+/i.test(l))
      .filter((l) => !expected.some((re) => re.test(l.trimEnd())))
  );
}

describe("ddclient reads the rendered /etc/ddclient.conf", () => {
  let fx: Fixture | undefined;
  afterAll(() => fx?.cleanup());

  it("freemyip: no config warnings; protocol, host, usev4/webv4 and the token as intended", async () => {
    fx = await renderFixture();
    const conf = fx.overlayText("etc/ddclient.conf");
    const token = fx.clear.ddns!;
    const host = "pibake-test.freemyip.com";
    const run = await runDdclient(conf, token);
    const out = run.output;
    expect(out).not.toContain(token);
    expect(configComplaints(out, host, "freemyip.com"), out).toEqual([]);
    expect(dumped(out, "globals{usev4}"), out).toBe("webv4");
    expect(dumped(out, "globals{webv4}"), out).toBe("https://api.ipify.org/");
    expect(dumped(out, `config{${host}}{protocol}`), out).toBe("freemyip");
    expect(dumped(out, `config{${host}}{host}`), out).toBe(host);
    expect(dumped(out, `config{${host}}{ssl}`) ?? dumped(out, "globals{ssl}"), out).toBe("1");
    // What it would do: ask the lookup service, then send the token unquoted to freemyip.
    expect(out).toMatch(/^CONNECT:\s+api\.ipify\.org \(IPv4\)$/m);
    expect(out).toMatch(/^UPDATE:\s+updating pibake-test\.freemyip\.com$/m);
    expect(out).toMatch(/^CONNECT:\s+freemyip\.com$/m);
    expect(out).toContain("SENDING:  GET /update?token=***&domain=pibake-test.freemyip.com HTTP/1.1");
    expect(run.sentSecret).toBe(true);
  });

  it("dyndns2: no config warnings; protocol, server, login, host, webv4 and a password with URL and config syntax in it", async () => {
    const config: TestConfig = baseConfig();
    config.tls.domain = "home.example.org";
    config.ddns = {
      provider: "dyndns2",
      server: "members.dyndns.org",
      login: "home-user",
      password: { env: "PIBAKE_TEST_DDNS_SECRET" },
      hostname: "mqtt.example.org",
      interval: 600,
      ipLookup: "https://ip.example.net/plain?format=text",
    };
    const secret = "p#ss,w=rd$x!&;%?@:y";
    const dyn = await renderFixture({ config, env: { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_DDNS_SECRET: secret } });
    try {
      const conf = dyn.overlayText("etc/ddclient.conf");
      const host = "mqtt.example.org";
      const run = await runDdclient(conf, secret, "home-user");
      const out = run.output;
      expect(out).not.toContain(secret);
      expect(configComplaints(out, host, "members.dyndns.org"), out).toEqual([]);
      expect(dumped(out, "globals{usev4}"), out).toBe("webv4");
      expect(dumped(out, "globals{webv4}"), out).toBe("https://ip.example.net/plain?format=text");
      expect(dumped(out, `config{${host}}{protocol}`), out).toBe("dyndns2");
      expect(dumped(out, `config{${host}}{server}`), out).toBe("members.dyndns.org");
      expect(dumped(out, `config{${host}}{host}`), out).toBe(host);
      expect(out).toMatch(/^CONNECT:\s+ip\.example\.net \(IPv4\)$/m);
      expect(out).toContain("SENDING:  GET /plain?format=text HTTP/1.1");
      expect(out).toMatch(/^CONNECT:\s+members\.dyndns\.org$/m);
      expect(out).toContain("SENDING:  GET /nic/update?system=dyndns&hostname=mqtt.example.org&myip= HTTP/1.1");
      expect(out).toContain("SENDING:  Authorization: Basic ***");
      // ddclient took the quoted password whole: '#', ',', '=' and the rest did not cut it short.
      expect(run.basicAuthIs(`home-user:${secret}`)).toBe(true);
      // /etc/default/ddclient, sourced by the Debian service, gives ddclient the same interval.
      const defaults = path.join(tempDir("pibake-default-"), "ddclient");
      writeFileSync(defaults, dyn.overlayFile("etc/default/ddclient"));
      const sh = await execa("sh", ["-euc", `. "$1"; printf '%s|%s|%s|%s' "$run_daemon" "$daemon_interval" "$run_dhclient" "$run_ipup"`, "sh", defaults], {
        timeout: 10_000,
      });
      expect(sh.stdout).toBe("true|600|false|false");
      expect(conf).toMatch(/^daemon=600$/m);
    } finally {
      dyn.cleanup();
    }
  });

  it("would notice a config warning (the check is not blind)", async () => {
    const f = fx ?? (fx = await renderFixture());
    const token = f.clear.ddns!;
    const broken = f.overlayText("etc/ddclient.conf").replace(/^usev4=webv4$/m, "usev4=webv4\nbogus-keyword=1\nusev6=nonsense");
    const run = await runDdclient(broken, token);
    const complaints = configComplaints(run.output, "pibake-test.freemyip.com", "freemyip.com");
    expect(
      complaints.some((l) => /unrecognized keyword 'bogus-keyword'/.test(l)),
      run.output,
    ).toBe(true);
    expect(
      complaints.some((l) => /usev6/.test(l)),
      run.output,
    ).toBe(true);
    expect(run.output).not.toContain(token);
  });
});

/**
 * Settings that a value must not have added: ddclient's -debug dump shows every keyword it took,
 * so an injected usev4/cmdv4 (or any other keyword set to a program) shows up there.
 */
function injected(output: string): string[] {
  const problems: string[] = [];
  if (dumped(output, "globals{usev4}") !== "webv4") problems.push(`globals{usev4} is ${dumped(output, "globals{usev4}")}, not webv4`);
  for (const l of output.split("\n")) {
    const m = /^(globals|config\{[^}]*\})\{(cmdv4|cmdv6|cmd|usev4|usev6|use|postscript)\}\s*:\s*(.*)$/.exec(l);
    if (!m) continue;
    const [, where, key, value] = m;
    const expected = key === "usev4" ? "webv4" : key === "use" ? "no|0|disabled|" : key === "usev6" ? "|disabled" : "<undefined>|";
    if (!new RegExp(`^(${expected})$`).test(value!.trimEnd())) problems.push(`${where}{${key}} was set`);
  }
  return problems;
}

/** A character class that is special to ddclient's config (or to what it hands values to), and how it enters a value. */
interface CharClass {
  name: string;
  put(base: string, at: number): string;
}
const mid = (s: string) => (base: string, at: number) => base.slice(0, at) + s + base.slice(at);
const CLASSES: CharClass[] = [
  { name: "comma", put: mid(",") },
  { name: "hash", put: mid("#") },
  { name: "equals", put: mid("=") },
  { name: "backslash", put: mid("\\") },
  { name: "single quote", put: mid("'") },
  { name: "double quote", put: mid('"') },
  { name: "space", put: mid(" ") },
  { name: "tab", put: mid("\t") },
  { name: "newline", put: mid("\n") },
  { name: "CR", put: mid("\r") },
  { name: "dollar", put: mid("$x") },
  { name: "colon", put: mid(":") },
  { name: "leading space", put: (b) => ` ${b}` },
  { name: "trailing space", put: (b) => `${b} ` },
  { name: "trailing backslash", put: (b) => `${b}\\` },
  { name: "non-ASCII", put: mid("é") },
  // U+00C5 is C3 85 in UTF-8: ddclient 3.11+ turn byte 0x85 into "\v" for curl (escape_curl_param).
  { name: "non-ASCII with byte 0x85", put: mid("Å") },
  { name: "control character", put: mid("\u0001") },
  { name: "keyword injection", put: mid(",usev4=cmdv4,cmdv4=/bin/true") },
  { name: "password setting", put: mid("password=x") },
];

const DYN_HOST = "mqtt.example.org";
const DYN_SERVER = "members.dyndns.org";
const DYN_LOGIN = "home-user";
const DYN_PASSWORD = "Dyn-Pass-w0rd";
const FMI_HOST = "pibake-test.freemyip.com";

function dyndns2Config(over: Record<string, string> = {}): TestConfig {
  const c = baseConfig();
  c.tls.domain = "home.example.org";
  c.ddns = { provider: "dyndns2", server: DYN_SERVER, login: DYN_LOGIN, password: { env: "PIBAKE_TEST_DDNS_SECRET" }, hostname: DYN_HOST, ...over };
  return c;
}

interface FieldCase {
  /** The config path, as ConfigError issues name it. */
  field: string;
  base: string;
  at: number;
  secret?: boolean;
  /** The config and the secret behind PIBAKE_TEST_DDNS_SECRET for a value of the field. */
  make(v: string): { config: TestConfig; secret: string };
  /** The classes pibake refuses for this field; every other one must be read back unchanged. */
  refused: string[];
  /** A problem with what ddclient read, in words (never showing a secret), or undefined. */
  readBack(run: DdclientRun, v: string): string | undefined;
  host: string;
  server: string;
  login?: (v: string) => string;
}

/** Refused in every value: no quoting carries them through ddclient's line handling, or through curl in 3.11+. */
const NEVER = [
  "backslash",
  "single quote",
  "space",
  "tab",
  "newline",
  "CR",
  "leading space",
  "trailing space",
  "trailing backslash",
  "non-ASCII",
  "non-ASCII with byte 0x85",
  "control character",
];
const ALL = CLASSES.map((k) => k.name);

const FIELDS: FieldCase[] = [
  {
    field: "ddns.login",
    base: DYN_LOGIN,
    at: 4,
    make: (v) => ({ config: dyndns2Config({ login: v }), secret: DYN_PASSWORD }),
    refused: [...NEVER, "hash", "colon", "password setting"],
    readBack: (run, v) => (run.basicAuthIs(`${v}:${DYN_PASSWORD}`) ? undefined : "the Basic credentials are not login:password"),
    host: DYN_HOST,
    server: DYN_SERVER,
    login: (v) => v,
  },
  {
    field: "ddns.password",
    base: DYN_PASSWORD,
    at: 4,
    secret: true,
    make: (v) => ({ config: dyndns2Config(), secret: v }),
    refused: NEVER,
    readBack: (run, v) => (run.basicAuthIs(`${DYN_LOGIN}:${v}`) ? undefined : "the Basic credentials are not login:password"),
    host: DYN_HOST,
    server: DYN_SERVER,
    login: () => DYN_LOGIN,
  },
  {
    field: "ddns.token",
    base: "ddnsT0ken4567890abcdef",
    at: 8,
    secret: true,
    make: (v) => ({ config: baseConfig(), secret: v }),
    // ddclient puts the token into freemyip's URL unescaped: only URL-safe characters.
    refused: ALL,
    readBack: (run, v) => (run.sentTokenIs(v) ? undefined : "the update request carries another token"),
    host: FMI_HOST,
    server: "freemyip.com",
  },
  {
    field: "ddns.server",
    base: DYN_SERVER,
    at: 7,
    make: (v) => ({ config: dyndns2Config({ server: v }), secret: DYN_PASSWORD }),
    refused: ALL,
    readBack: (run, v) => (dumped(run.output, `config{${DYN_HOST}}{server}`) === v.toLowerCase() ? undefined : "config{…}{server} is another value"),
    host: DYN_HOST,
    server: DYN_SERVER,
    login: () => DYN_LOGIN,
  },
  {
    field: "ddns.hostname",
    base: DYN_HOST,
    at: 4,
    make: (v) => ({ config: dyndns2Config({ hostname: v }), secret: DYN_PASSWORD }),
    refused: ALL,
    readBack: (run, v) => (dumped(run.output, `config{${v}}{host}`) === v ? undefined : "config{…}{host} is another value"),
    host: DYN_HOST,
    server: DYN_SERVER,
    login: () => DYN_LOGIN,
  },
  {
    field: "ddns.ipLookup",
    base: "https://ip.example.net/plain?format=text",
    at: "https://ip.example.net/plain?".length,
    make: (v) => {
      const config = baseConfig();
      config.ddns.ipLookup = v;
      return { config, secret: DEFAULT_SECRET_ENV.PIBAKE_TEST_DDNS_SECRET! };
    },
    refused: [...NEVER, "hash", "double quote", "password setting"],
    readBack: (run, v) => {
      if (dumped(run.output, "globals{webv4}") !== v) return `globals{webv4} is ${JSON.stringify(dumped(run.output, "globals{webv4}"))}`;
      const pathPart = v.replace(/^https?:\/\/[^/]*/, "") || "/";
      return run.output.includes(`SENDING:  GET ${pathPart} HTTP/1.1`) ? undefined : "ddclient would not request that URL's path";
    },
    host: FMI_HOST,
    server: "freemyip.com",
  },
];

/** Runs jobs at most `limit` at a time (ddclient runs are perl start-ups: parallel is much faster). */
async function pool<T, R>(items: T[], limit: number, job: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await job(items[i]!, i);
      }
    }),
  );
  return out;
}

describe("every value pibake writes into ddclient.conf: refused naming the field, or read back unchanged by the real ddclient", () => {
  it("the plain and special values classes of each field are listed (the table is complete)", () => {
    for (const f of FIELDS) for (const r of f.refused) expect(ALL, `${f.field}: unknown class ${r}`).toContain(r);
    expect(FIELDS.map((f) => f.field).sort()).toEqual(["ddns.hostname", "ddns.ipLookup", "ddns.login", "ddns.password", "ddns.server", "ddns.token"]);
  });

  it.each(FIELDS.map((f) => [f.field, f] as const))("%s", async (_name, f) => {
    const cases = [{ name: "plain", value: f.base }, ...CLASSES.map((k) => ({ name: k.name, value: k.put(f.base, f.at) }))];
    const dir = tempDir("pibake-ddclient-values-");
    const problems = await pool(cases, 8, async ({ name, value }, i): Promise<string | undefined> => {
      const label = f.secret ? `${name} (secret)` : `${name} ${JSON.stringify(value)}`;
      const { config, secret } = f.make(value);
      const env = { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_DDNS_SECRET: secret };
      const configPath = path.join(dir, `broker-${i}.json`);
      writeFileSync(configPath, JSON.stringify(config));
      let refusal: ConfigError | undefined;
      try {
        loadConfig(configPath, env);
      } catch (err) {
        if (!(err instanceof ConfigError)) return `${label}: not a config error: ${redactAll((err as Error).message, [secret])}`;
        refusal = err;
      }
      const shouldRefuse = f.refused.includes(name);
      if (refusal) {
        if (!shouldRefuse) return `${label}: refused, but ddclient can carry it: ${redactAll(refusal.message, [secret])}`;
        const issue = refusal.issues.find((x) => x.path === f.field);
        if (!issue) return `${label}: refused without naming ${f.field}: ${redactAll(refusal.message, [secret])}`;
        if (refusal.message.includes(secret) && f.secret) return `${label}: the message shows the secret`;
        // The message says what is allowed, after the value (or "(secret …)").
        if (!/ddclient|host name|DNS name|http\(s\) URL|line break/.test(issue.message))
          return `${label}: the message does not say what is allowed: ${issue.message}`;
        return undefined;
      }
      if (shouldRefuse) return `${label}: accepted, but it should be refused`;
      const fx = await renderFixture({ config, env });
      try {
        const run = await runDdclient(fx.overlayText("etc/ddclient.conf"), secret, f.login?.(value));
        const out = run.output;
        const complaints = configComplaints(out, f.host, f.server);
        if (complaints.length > 0) return `${label}: ddclient complains: ${complaints.join(" | ")}`;
        const inj = injected(out);
        if (inj.length > 0) return `${label}: a keyword was injected: ${inj.join(", ")}`;
        const wrong = f.readBack(run, value);
        return wrong ? `${label}: ${wrong}` : undefined;
      } finally {
        fx.cleanup();
      }
    });
    expect(problems.filter((p) => p !== undefined)).toEqual([]);
  });

  it("a server without a dot is refused: ddclient drops it as invalid and would send the login to members.dyndns.org", async () => {
    const dir = tempDir("pibake-ddclient-server-");
    const configPath = path.join(dir, "broker.json");
    writeFileSync(configPath, JSON.stringify(dyndns2Config({ server: "dyndns" })));
    let refusal: unknown;
    try {
      loadConfig(configPath, { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_DDNS_SECRET: DYN_PASSWORD });
    } catch (err) {
      refusal = err;
    }
    expect(refusal).toBeInstanceOf(ConfigError);
    expect((refusal as ConfigError).issues).toContainEqual({
      path: "ddns.server",
      message: expect.stringMatching(/^"dyndns" is not a fully qualified host name/),
    });
    // Why: what ddclient makes of such a line.
    const fx = await renderFixture({ config: dyndns2Config(), env: { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_DDNS_SECRET: DYN_PASSWORD } });
    try {
      const run = await runDdclient(fx.overlayText("etc/ddclient.conf").replace(/^server=.*$/m, "server='dyndns'"), DYN_PASSWORD, DYN_LOGIN);
      expect(run.output).toMatch(/Invalid Value for keyword 'server' = 'dyndns'/);
      expect(dumped(run.output, `config{${DYN_HOST}}{server}`)).toBe("members.dyndns.org");
    } finally {
      fx.cleanup();
    }
  });

  it("regression: login me,usev4=cmdv4,cmdv4=<program> is read whole and the program never runs; written unquoted, it ran", async () => {
    const dir = tempDir("pibake-ddclient-cmd-");
    const prog = path.join(dir, "prog");
    const marker = `${prog}.ran`;
    writeFileSync(prog, `#!/bin/sh\n: > '${marker}'\n`, { mode: 0o755 });
    const login = `me,usev4=cmdv4,cmdv4=${prog}`;
    const fx = await renderFixture({ config: dyndns2Config({ login }), env: { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_DDNS_SECRET: DYN_PASSWORD } });
    try {
      const conf = fx.overlayText("etc/ddclient.conf");
      const run = await runDdclient(conf, DYN_PASSWORD, login);
      expect(injected(run.output), run.output).toEqual([]);
      expect(dumped(run.output, "globals{usev4}"), run.output).toBe("webv4");
      expect(run.basicAuthIs(`${login}:${DYN_PASSWORD}`)).toBe(true);
      expect(existsSync(marker)).toBe(false);
      // The check is not blind: the line as pibake wrote it before (unquoted) makes ddclient run the program.
      const unquoted = conf.replace(/^login=.*$/m, `login=${login}`);
      expect(unquoted).not.toBe(conf);
      const bad = await runDdclient(unquoted, DYN_PASSWORD);
      expect(injected(bad.output).length, bad.output).toBeGreaterThan(0);
      expect(existsSync(marker)).toBe(true);
    } finally {
      fx.cleanup();
    }
  });
});
