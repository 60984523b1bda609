/**
 * The rendered /etc/ddclient.conf read by the real ddclient, for both
 * providers: no warnings about the config, and the values ddclient parsed are
 * the intended ones. `-noexec` makes ddclient skip every network connection
 * (it prints what it would send instead), so nothing leaves the machine; the
 * warnings that only come from the missing IP address are expected.
 * The token/password appears in ddclient's verbose output: everything this
 * test prints or asserts on is redacted first.
 */
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { baseConfig, DEFAULT_SECRET_ENV, redactAll, removeAllFixtures, renderFixture, tempDir, type Fixture, type TestConfig } from "./helpers/render-fixture.js";

afterAll(() => removeAllFixtures());

interface DdclientRun {
  /** ddclient's stdout and stderr, with the secret (and its Basic-auth form) replaced by ***. */
  output: string;
  /** Whether the raw output held the secret, i.e. ddclient read it and would send it. */
  sentSecret: boolean;
  /** The credentials of an Authorization: Basic header, decoded, compared without printing them. */
  basicAuthIs(expected: string): boolean;
}

async function runDdclient(conf: string, secret: string, login?: string): Promise<DdclientRun> {
  const dir = tempDir("pibake-ddclient-");
  const file = path.join(dir, "ddclient.conf");
  writeFileSync(file, conf, { mode: 0o600 });
  chmodSync(file, 0o600);
  const r = await execa(
    "ddclient",
    ["-file", file, "-noexec", "-verbose", "-debug", "-foreground", "-daemon=0", "-cache", path.join(dir, "ddclient.cache")],
    { reject: false, timeout: 30_000, all: true, env: { PATH: process.env.PATH ?? "/usr/bin:/bin" }, extendEnv: false },
  );
  if (r.failed && r.exitCode === undefined) throw new Error(`ddclient could not run (${redactAll(r.shortMessage ?? "", [secret])}); CI installs the Debian package ddclient`);
  expect(r.timedOut, "ddclient did not finish within 30 s").toBe(false);
  const raw = r.all ?? "";
  const basic = login ? Buffer.from(`${login}:${secret}`).toString("base64") : undefined;
  const output = redactAll(raw, [secret, basic]);
  return {
    output,
    sentSecret: raw.includes(secret) || (basic !== undefined && raw.includes(basic)),
    basicAuthIs: (expected) => {
      const m = /Authorization: Basic (\S+)/.exec(raw);
      return m !== null && Buffer.from(m[1]!, "base64").toString("utf8") === expected;
    },
  };
}

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
  return output
    .split("\n")
    // The -debug dump of parsed settings (names like min-error-interval) is data, not a complaint.
    .filter((l) => !/^((opt|globals|config|cache)\{|DEBUG:)/.test(l))
    .filter((l) => /^(WARNING|FAILED|FATAL|ERROR|CRITICAL)|warning|error|invalid|unrecognized|deprecated|Use of uninitialized|at \S+ line \d+/i.test(l))
    .filter((l) => !expected.some((re) => re.test(l.trimEnd())));
}

/** `key : value` pairs of ddclient's -debug dump, e.g. globals{usev4} or config{host}{protocol}. */
function dumped(output: string, key: string): string | undefined {
  const line = output.split("\n").find((l) => l.startsWith(`${key} `) || l.startsWith(`${key}:`));
  return line?.replace(/^[^:]*?\}\s*:\s?/, "").trimEnd();
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
    expect(complaints.some((l) => /unrecognized keyword 'bogus-keyword'/.test(l)), run.output).toBe(true);
    expect(complaints.some((l) => /usev6/.test(l)), run.output).toBe(true);
    expect(run.output).not.toContain(token);
  });
});
