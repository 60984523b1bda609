/**
 * The journal cap in the rendered journald drop-in, measured with systemd's own
 * journal writer: a day of a busy Internet-facing broker's log (entries shaped
 * as journald stores mosquitto.service's stderr lines, with the fields it adds)
 * is written by systemd-journal-remote into a journal file, and the file's size
 * per entry says how many days the cap holds.
 */
import { createWriteStream, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { removeAllFixtures, renderFixture, tempDir } from "./helpers/render-fixture.js";

const JOURNAL_REMOTE = "/usr/lib/systemd/systemd-journal-remote";
const DROP_IN = "etc/systemd/journald.conf.d/50-pibake.conf";
/** A broker on the Internet, scanned and guessed at, plus the rest of the system: a generous day. */
const ENTRIES_PER_DAY = 10_000;

afterAll(() => removeAllFixtures());

/** journald's sizes: a number with an optional K, M, G (powers of 1024). */
function bytes(size: string): number {
  const m = /^(\d+)([KMG])?$/.exec(size);
  if (!m) throw new Error(`not a journald size: ${size}`);
  return Number(m[1]) * 1024 ** (m[2] ? "KMG".indexOf(m[2]) + 1 : 0);
}

describe("the journal on the SD card", () => {
  it("is kept on the card, capped, in a drop-in that journald reads after its own file", async () => {
    const fx = await renderFixture();
    const conf = fx.overlayText(DROP_IN);
    const settings = Object.fromEntries(
      conf
        .split("\n")
        .filter((l) => /^\w+=/.test(l))
        .map((l) => l.split("=", 2) as [string, string]),
    );
    expect(settings).toEqual({ Storage: "persistent", SystemMaxUse: "200M", SystemMaxFileSize: "20M", SystemKeepFree: "500M" });
    expect(conf).toMatch(/^\[Journal\]$/m);
    // systemd's own view of journald's configuration with the drop-in in place.
    const root = tempDir("pibake-journald-");
    mkdirSync(path.join(root, path.dirname(DROP_IN)), { recursive: true });
    writeFileSync(path.join(root, DROP_IN), conf);
    const cat = await execa("systemd-analyze", [`--root=${root}`, "cat-config", "systemd/journald.conf"], { reject: false, all: true, timeout: 30_000 });
    expect(cat.all).toContain(`# ${path.join(root, DROP_IN)}`);
    expect(cat.all).toContain("SystemMaxUse=200M");
    fx.cleanup();
  });

  it(`holds at least 30 days of ${ENTRIES_PER_DAY} entries a day, measured with systemd-journal-remote`, async () => {
    const fx = await renderFixture();
    const maxUse = bytes(/^SystemMaxUse=(\S+)$/m.exec(fx.overlayText(DROP_IN))![1]!);
    fx.cleanup();
    const dir = tempDir("pibake-journal-");
    const exported = path.join(dir, "day.export");
    const journal = path.join(dir, "day.journal");
    await writeMosquittoDay(exported, ENTRIES_PER_DAY * 10);
    const r = await execa(JOURNAL_REMOTE, [`--output=${journal}`, exported], { reject: false, all: true, timeout: 120_000 });
    expect(r.exitCode, `${r.all} (CI installs the Debian package systemd-journal-remote)`).toBe(0);
    // What was written reads back as mosquitto.service's lines.
    const back = await execa("journalctl", ["--file", journal, "_SYSTEMD_UNIT=mosquitto.service", "-o", "cat", "-n", "4"], { timeout: 60_000 });
    expect(back.stdout).toMatch(/^New connection from \d+\.\d+\.\d+\.\d+:\d+ on port 8883\.$/m);
    const perEntry = statSync(journal).size / (ENTRIES_PER_DAY * 10);
    const days = maxUse / (perEntry * ENTRIES_PER_DAY);
    expect(perEntry, `${perEntry.toFixed(0)} bytes an entry`).toBeLessThan(700);
    expect(days, `${days.toFixed(0)} days at ${perEntry.toFixed(0)} bytes an entry`).toBeGreaterThanOrEqual(30);
  }, 180_000);
});

/** Entries in journald's export format, as journald records a service's stderr lines. */
async function writeMosquittoDay(file: string, count: number): Promise<void> {
  const out = createWriteStream(file);
  const id = () => randomBytes(16).toString("hex");
  const [boot, machine, invocation, stream] = [id(), id(), id(), id()];
  const start = 1_790_000_000_000_000;
  const octet = () => 1 + (randomBytes(1)[0]! % 254);
  for (let i = 0; i < count; i++) {
    const addr = `${octet()}.${octet()}.${octet()}.${octet()}:${1024 + (randomBytes(2).readUInt16BE() % 64000)}`;
    const client = `auto-${randomBytes(8).toString("hex")}`;
    const message = [
      `New connection from ${addr} on port 8883.`,
      "Client <unknown> disconnected, not authorised.",
      `New client connected from ${addr} as ${client} (p2, c1, k60, u'phone').`,
      `Client ${client} closed its connection.`,
    ][i % 4];
    const at = start + Math.floor((i * 86_400e6) / ENTRIES_PER_DAY);
    const fields: [string, string | number][] = [
      ["__REALTIME_TIMESTAMP", at],
      ["__MONOTONIC_TIMESTAMP", at - start + 5_000_000],
      ["_BOOT_ID", boot],
      ["_MACHINE_ID", machine],
      ["_HOSTNAME", "broker"],
      ["PRIORITY", 6],
      ["SYSLOG_FACILITY", 3],
      ["SYSLOG_IDENTIFIER", "mosquitto"],
      ["_PID", 612],
      ["_UID", 104],
      ["_GID", 109],
      ["_COMM", "mosquitto"],
      ["_EXE", "/usr/sbin/mosquitto"],
      ["_CMDLINE", "/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf"],
      ["_CAP_EFFECTIVE", 0],
      ["_SYSTEMD_CGROUP", "/system.slice/mosquitto.service"],
      ["_SYSTEMD_UNIT", "mosquitto.service"],
      ["_SYSTEMD_SLICE", "system.slice"],
      ["_SYSTEMD_INVOCATION_ID", invocation],
      ["_TRANSPORT", "stdout"],
      ["_STREAM_ID", stream],
      ["MESSAGE", message!],
    ];
    if (!out.write(`${fields.map(([k, v]) => `${k}=${v}`).join("\n")}\n\n`)) await new Promise<void>((r) => out.once("drain", () => r()));
  }
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  expect(readFileSync(file, "utf8").startsWith("__REALTIME_TIMESTAMP=")).toBe(true);
}
