/**
 * `pibake check --ssh`: what the Pi says of itself (stages/check/facts.sh)
 * and the verdict on each fact. The script runs here for real under bash (this
 * machine has no systemd as PID 1, so systemctl's refusal is part of the
 * test); on a booted Pi it runs in test/boot.test.ts. ddclient's cache lines
 * are in the format of its write_cache (keys sorted, comma-joined, then the
 * host name), as ddclient 3.10 writes them and 3.11 with -ipv4 keys.
 */
import { execa } from "execa";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { judgeFacts, NODE_RED_INSTALL, parseFacts, type PiFacts } from "../src/check/facts.js";
import { editorWhileInstalling } from "../src/check/index.js";
import { FACTS_SCRIPT, factsCommand } from "../src/check/ssh.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { configDigest } from "../src/config/digest.js";
import { loadConfig } from "../src/config/load.js";
import { configDigests } from "../src/secrets/digests.js";
import { StateDir } from "../src/secrets/state.js";
import { repoRoot, secretEnv, validConfig, writeJson } from "./helpers/cli.js";

const NOW = 1_796_500_000;
const GiB = 1024 ** 3;
const b64 = (s: string) => Buffer.from(s).toString("base64");

/** The script's answer for a healthy Pi, with `change` applied to its lines. */
function answer(change: (lines: string[]) => string[] = (l) => l): string {
  const lines = [
    "uptime\t7300.12",
    "failed-units-read",
    "unit\tmosquitto\tLoadState=loaded\tActiveState=active\tActiveEnterTimestampMonotonic=100000000\tNRestarts=0",
    "unit\tddclient\tLoadState=loaded\tActiveState=active\tActiveEnterTimestampMonotonic=99000000\tNRestarts=0",
    `ddclient-cache\tatime=${NOW - 120},ip=203.0.113.7,mtime=${NOW - 86_400},status=good,wtime=0`,
    `disk\t/\t${30 * GiB}\t${20 * GiB}`,
    `disk\t/boot/firmware\t${512 * 1024 ** 2}\t${400 * 1024 ** 2}`,
    `memory\t${4 * GiB}\t${3 * GiB}`,
    `status\t${NOW - 600}\t${b64("pibake 0.1.0 status report\nimage:  broker (trixie, arm64), config sha256:ab\nmosquitto: active\n  TLS port 8883: listening\n")}`,
    `now\t${NOW}`,
    "end",
  ];
  return change(lines).join("\n") + "\n";
}

const judge = (text: string, ddns = true) => judgeFacts(parseFacts(text), { where: "admin@pi:22", ddnsHostname: ddns ? "home.freemyip.com" : undefined });
const verdict = (text: string, name: string, ddns = true) => judge(text, ddns).find((c) => c.name === name);
const replace = (prefix: string, line: string) => (lines: string[]) => lines.map((l) => (l.startsWith(prefix) ? line : l));

describe("pibake check --ssh: the Pi's facts judged", () => {
  it("a healthy Pi: every line ok, with mosquitto's uptime, ddclient's last update and the headroom in words", () => {
    const results = judge(answer());
    expect(results.filter((r) => r.status !== "ok")).toEqual([]);
    expect(results.map((r) => r.name)).toEqual(["failed units", "mosquitto uptime", "ddclient", "disk /", "disk /boot/firmware", "memory", "pibake-status"]);
    expect(verdict(answer(), "mosquitto uptime")?.detail).toBe("active for 2 h 0 min (the Pi up 2 h 1 min)");
    expect(verdict(answer(), "ddclient")?.detail).toBe(
      "home.freemyip.com → 203.0.113.7: last update 2026-12-04T19:46:40Z, 24 h 0 min ago (good); last check 2026-12-05T19:44:40Z, 2 min ago",
    );
    expect(verdict(answer(), "disk /")?.detail).toBe("20.0 GiB free of 30.0 GiB (67 %)");
    expect(verdict(answer(), "memory")?.detail).toBe("3.0 GiB available of 4.0 GiB");
    expect(verdict(answer(), "pibake-status")?.detail).toBe("written 2026-12-05T19:36:40Z (10 min ago): broker (trixie, arm64), config sha256:ab");
  });

  it.each<[string, (l: string[]) => string[], string, "warning" | "failed", RegExp]>([
    ["a failed unit", (l) => ["failed-unit\tnodered.service", ...l], "failed units", "failed", /^nodered\.service$/],
    [
      "systemctl unreachable",
      (l) => l.filter((x) => x !== "failed-units-read").concat("error\tsystemctl --failed\tSystem has not been booted with systemd"),
      "failed units",
      "warning",
      /could not be asked \(systemctl --failed: System has not been booted/,
    ],
    [
      "mosquitto down",
      replace("unit\tmosquitto", "unit\tmosquitto\tLoadState=loaded\tActiveState=failed\tActiveEnterTimestampMonotonic=0\tNRestarts=5"),
      "mosquitto uptime",
      "failed",
      /mosquitto\.service is failed/,
    ],
    [
      "mosquitto restarted by systemd",
      replace("unit\tmosquitto", "unit\tmosquitto\tLoadState=loaded\tActiveState=active\tActiveEnterTimestampMonotonic=7000000000\tNRestarts=2"),
      "mosquitto uptime",
      "warning",
      /active for 5 min .*restarted it 2 time/,
    ],
    [
      "ddclient stopped",
      replace("unit\tddclient", "unit\tddclient\tLoadState=loaded\tActiveState=inactive\tActiveEnterTimestampMonotonic=0\tNRestarts=0"),
      "ddclient",
      "failed",
      /ddclient\.service is inactive/,
    ],
    [
      "ddclient without a cache yet",
      replace("ddclient-cache", "ddclient-cache\tnone"),
      "ddclient",
      "warning",
      /has not updated home\.freemyip\.com yet \(no \/var\/cache/,
    ],
    ["ddclient's cache without the name", replace("ddclient-cache", "ddclient-cache\t-"), "ddclient", "warning", /no entry for it in/],
    [
      "the provider refused the token",
      replace("ddclient-cache", `ddclient-cache\tatime=${NOW - 60},ip=203.0.113.7,mtime=0,status=badauth`),
      "ddclient",
      "failed",
      /the last update .* answered badauth/,
    ],
    ["a full root file system", replace("disk\t/\t", `disk\t/\t${30 * GiB}\t${50 * 1024 ** 2}`), "disk /", "failed", /^50 MiB free of 30\.0 GiB \(0 %\)$/],
    ["a nearly full root file system", replace("disk\t/\t", `disk\t/\t${30 * GiB}\t${2 * GiB}`), "disk /", "warning", /2\.0 GiB free .*\(7 %\)/],
    [
      "a full boot partition",
      replace("disk\t/boot", `disk\t/boot/firmware\t${512 * 1024 ** 2}\t${3 * 1024 ** 2}`),
      "disk /boot/firmware",
      "failed",
      /^3 MiB free/,
    ],
    ["little memory", replace("memory", `memory\t${GiB}\t${50 * 1024 ** 2}`), "memory", "warning", /50 MiB available of 1\.0 GiB/],
    ["no memory", replace("memory", `memory\t${GiB}\t${10 * 1024 ** 2}`), "memory", "failed", /10 MiB available/],
    ["no status report", (l) => l.filter((x) => !x.startsWith("status")), "pibake-status", "warning", /no \/boot\/firmware\/pibake-status\.txt/],
    [
      "a stale status report",
      replace("status", `status\t${NOW - 5 * 3600}\t${b64("image:  broker\n")}`),
      "pibake-status",
      "warning",
      /5 h 0 min ago.*not rewritten/,
    ],
    [
      "a port not listening at boot",
      replace("status", `status\t${NOW - 60}\t${b64("image:  broker\n  TLS port 8883: NOT listening\n")}`),
      "pibake-status",
      "warning",
      /it says TLS port 8883: NOT listening/,
    ],
  ])("%s", (_what, change, name, status, detail) => {
    const r = verdict(answer(change), name);
    expect(r?.status).toBe(status);
    expect(r?.detail).toMatch(detail);
    expect(r?.fix, "a fix is named").toBeTruthy();
  });

  it("reads ddclient 3.11's keys (status-ipv4, ipv4)", () => {
    const r = verdict(answer(replace("ddclient-cache", `ddclient-cache\tatime=${NOW - 60},ipv4=198.51.100.9,mtime=${NOW - 60},status-ipv4=nochg`)), "ddclient");
    expect(r).toMatchObject({ status: "ok", detail: expect.stringMatching(/→ 198\.51\.100\.9: last update .* \(nochg\)/) });
  });

  it("tells whether the Pi runs the config checked: the last push's record first, else the build's digest in the status report", () => {
    const THIS = `sha256:${"ab".repeat(32)}`;
    const OTHER = `sha256:${"cd".repeat(32)}`;
    const withStatus = (digest: string) => replace("status", `status\t${NOW - 60}\t${b64(`image:  broker (trixie, arm64), config ${digest}\n`)}`);
    const pushed = (digest: string) => (l: string[]) => [
      `push-record\t${b64(JSON.stringify({ pushedAt: "2026-12-01T10:00:00.000Z", config: { digest } }))}`,
      ...l,
    ];
    const pi = (change: (l: string[]) => string[]) =>
      judgeFacts(parseFacts(answer(change)), {
        where: "pi",
        ddnsHostname: "home.freemyip.com",
        configDigest: THIS,
        pushCommand: "pibake push broker.json pi",
      }).find((c) => c.name === "pi config");
    expect(pi(withStatus(THIS))).toMatchObject({ status: "ok", detail: "the Pi runs this config (built with it, never pushed)" });
    expect(pi(withStatus(OTHER))).toMatchObject({ status: "warning", fix: "bring it to this config: pibake push broker.json pi" });
    // After a push, the status report may still name the build's config until it is rewritten: the record wins.
    expect(pi((l) => pushed(THIS)(withStatus(OTHER)(l)))).toMatchObject({ status: "ok", detail: "the Pi runs this config (pushed 2026-12-01T10:00:00.000Z)" });
    expect(pi((l) => pushed(OTHER)(withStatus(THIS)(l)))?.status).toBe("warning");
    expect(pi((l) => l.filter((x) => !x.startsWith("status")))).toBeUndefined();
  });

  it("the digests compared are one: the status report's (render) and the push record's (configDigests) for the same config", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "pibake-facts-"));
    try {
      const cfg = writeJson(path.join(dir, "broker.json"), validConfig());
      const { model } = loadConfig(cfg, secretEnv);
      expect(configDigests(model, new StateDir(path.join(dir, "state"))).digest).toBe(configDigest(model));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('tls.mode "acme": the renewal timer and its last result, in words; nothing of it in own-ca mode', () => {
    const acme = (...lines: string[]) => answer((l) => [...l.slice(0, -2), ...lines, ...l.slice(-2)]);
    const of = (text: string) =>
      judgeFacts(parseFacts(text), { where: "pi", ddnsHostname: "home.freemyip.com", acme: true }).find((c) => c.name === "public certificate");
    const status = (s: string) => `acme-status\t${b64(s)}`;
    const good = status(
      `result=ok\nchecked=${NOW - 1800}\nfailures=0\nnext_attempt=0\nissuer=CN = R11, O = Let's Encrypt\nnot_after=${NOW + 80 * 86_400}\nmessage=certificate for home.freemyip.com installed\n`,
    );
    expect(of(acme("acme-timer\tactive", good))).toEqual({
      name: "public certificate",
      status: "ok",
      detail: `last run ${new Date((NOW - 1800) * 1000).toISOString().replace(".000", "")}, 30 min ago: certificate for home.freemyip.com installed; issued by CN = R11, O = Let's Encrypt, valid until ${new Date((NOW + 80 * 86_400) * 1000).toISOString().replace(".000", "")} (80 days left)`,
    });
    const bad = status(
      `result=failed\nchecked=${NOW - 60}\nfailures=2\nnext_attempt=${NOW + 6600}\nmessage=freemyip did not set the TXT record (freemyip-txt: cannot reach freemyip's update API: curl: (6) Could not resolve host: freemyip.com)\n`,
    );
    const failing = of(acme("acme-timer\tactive", bad))!;
    expect(failing.status).toBe("warning");
    expect(failing.detail).toMatch(
      /^the last 2 attempt\(s\) failed, the last .*: freemyip did not set the TXT record \(.*Could not resolve host: freemyip\.com\); the next attempt after \S+; the broker keeps its current certificate$/,
    );
    expect(failing.fix).toBe("on the Pi: journalctl -u pibake-acme");
    expect(of(acme("acme-timer\tactive"))).toMatchObject({ status: "warning", detail: expect.stringContaining("no renewal has run yet") });
    expect(of(acme("acme-timer\tinactive", good))).toMatchObject({ status: "failed", detail: "pibake-acme.timer is inactive: nothing renews the certificate" });
    expect(of(answer())).toMatchObject({ status: "failed" });
    expect(judge(answer()).find((c) => c.name === "public certificate")).toBeUndefined();
  });

  it("Node-RED's first-boot install: done, under way (a warning, and the silent editor a warning too), failed and waiting, or never run", () => {
    const firstBoot = (props: string, ...more: string[]) =>
      answer((l) => [
        ...l.slice(0, 4),
        `unit\tpibake-firstboot\tLoadState=loaded\t${props}\tActiveEnterTimestampMonotonic=6700000000\tNRestarts=0`,
        ...more,
        ...l.slice(4),
      ]);
    const of = (text: string) => judgeFacts(parseFacts(text), { where: "pi", ddnsHostname: undefined, nodeRed: true }).find((c) => c.name === NODE_RED_INSTALL);
    expect(of(firstBoot("ActiveState=inactive\tSubState=dead", "firstboot-done\t2026-12-05T18:00:00Z"))).toMatchObject({
      status: "ok",
      detail: "installed by the first boot (done 2026-12-05T18:00:00Z)",
    });
    const installing = of(firstBoot("ActiveState=active\tSubState=running"));
    expect(installing).toMatchObject({
      status: "warning",
      detail: "the first boot is installing npm, Node-RED and the dashboard (running for 10 min); the editor answers when it is done",
    });
    expect(of(firstBoot("ActiveState=activating\tSubState=auto-restart"))).toMatchObject({
      status: "failed",
      detail: "the first boot's install failed; systemd runs it again later",
      fix: "on the Pi: journalctl -b -u pibake-firstboot",
    });
    expect(of(firstBoot("ActiveState=failed\tSubState=failed"))?.status).toBe("failed");
    expect(of(answer())).toMatchObject({ status: "failed", detail: expect.stringContaining("pibake-firstboot.service is unknown") });
    expect(judgeFacts(parseFacts(answer()), { where: "pi", ddnsHostname: undefined }).find((c) => c.name === NODE_RED_INSTALL)).toBeUndefined();

    const silent = {
      name: "node-red",
      status: "failed" as const,
      detail: "the editor at pi:1880 does not answer: connection refused",
      fix: "on the Pi: systemctl status nodered",
    };
    expect(editorWhileInstalling([silent, installing!])[0]).toEqual({
      name: "node-red",
      status: "warning",
      detail: `${silent.detail}: the first boot is still installing it`,
      fix: "on the Pi: journalctl -fu pibake-firstboot",
    });
    const done = of(firstBoot("ActiveState=inactive\tSubState=dead", "firstboot-done\tx"))!;
    expect(editorWhileInstalling([silent, done])[0]).toBe(silent);
    expect(editorWhileInstalling([silent])[0]).toBe(silent);
  });

  it("says nothing of ddclient without ddns, and refuses an answer cut short", () => {
    expect(verdict(answer(), "ddclient", false)).toBeUndefined();
    expect(() => parseFacts(answer((l) => l.slice(0, 4)))).toThrow(/cut short/);
  });

  it("the real script under bash: every line parses, systemctl's refusal is a warning, and the disk and memory are this machine's", async () => {
    const r = await execa("bash", [FACTS_SCRIPT, "home.freemyip.com"], { reject: false, timeout: 30_000 });
    expect(r.exitCode, r.stderr).toBe(0);
    const facts: PiFacts = parseFacts(r.stdout);
    expect(facts.disks.map((d) => d.mount)).toContain("/");
    expect(facts.memory!.total).toBeGreaterThan(facts.memory!.available);
    expect(Math.abs(facts.now - Date.now() / 1000)).toBeLessThan(60);
    const results = judgeFacts(facts, { where: "here", ddnsHostname: "home.freemyip.com" });
    if (facts.failedUnits === undefined) expect(results.find((x) => x.name === "failed units")?.status).toBe("warning");
    expect(results.find((x) => x.name === "disk /")?.detail).toMatch(/free of/);
  });

  it("sends the script as one command line that a login shell runs whole (what sshd does with it: the user's shell -c)", async () => {
    const r = await execa("sh", ["-c", factsCommand("it's.example")], { reject: false, timeout: 30_000 });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(parseFacts(r.stdout).ddclientCache).toBeDefined();
    expect(path.relative(repoRoot, FACTS_SCRIPT)).toBe("stages/check/facts.sh");
  });
});
