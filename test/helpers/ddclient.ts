/**
 * The real ddclient reading a rendered /etc/ddclient.conf. `-noexec` makes it
 * skip every network connection (it prints what it would send instead), so
 * nothing leaves the machine. Its verbose output holds the secret: `output` is
 * redacted, and the secret is compared only through the functions below.
 */
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { expect } from "vitest";
import { redactAll, tempDir } from "./render-fixture.js";

export interface DdclientRun {
  /** ddclient's stdout and stderr, with the secret (and its Basic-auth form) replaced by ***. */
  output: string;
  /** Whether the raw output held the secret, i.e. ddclient read it and would send it. */
  sentSecret: boolean;
  /** The credentials of an Authorization: Basic header, decoded, compared without printing them. */
  basicAuthIs(expected: string): boolean;
  /** Whether freemyip's update request carries exactly this token, compared without printing it. */
  sentTokenIs(expected: string): boolean;
}

export async function runDdclient(conf: string, secret: string, login?: string): Promise<DdclientRun> {
  const dir = tempDir("pibake-ddclient-");
  const file = path.join(dir, "ddclient.conf");
  writeFileSync(file, conf, { mode: 0o600 });
  chmodSync(file, 0o600);
  const r = await execa("ddclient", ["-file", file, "-noexec", "-verbose", "-debug", "-foreground", "-daemon=0", "-cache", path.join(dir, "ddclient.cache")], {
    reject: false,
    timeout: 30_000,
    all: true,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    extendEnv: false,
  });
  if (r.failed && r.exitCode === undefined)
    throw new Error(`ddclient could not run (${redactAll(r.shortMessage ?? "", [secret])}); CI installs the Debian package ddclient`);
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
    sentTokenIs: (expected) => /^SENDING:\s+GET \/update\?token=(.*)&domain=\S+ HTTP\/1\.1$/m.exec(raw)?.[1] === expected,
  };
}

export /** `key : value` pairs of ddclient's -debug dump, e.g. globals{usev4} or config{host}{protocol}. */
function dumped(output: string, key: string): string | undefined {
  const line = output.split("\n").find((l) => l.startsWith(`${key} `) || l.startsWith(`${key}:`));
  return line?.replace(/^[^:]*?\}\s*:\s?/, "").trimEnd();
}
