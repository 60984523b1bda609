/**
 * pibake push without a Pi: the plan (what changes, what is refused, what is
 * restarted) table-driven; the inspect script run for real on this machine
 * and its answer parsed; the ssh options read back by ssh itself (-G); the
 * payload unpacked by GNU tar as the apply script does; the remote command
 * run through the real sudo; the apply script run here against trees with links.
 */
import { createHash } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import type { OverlayFile } from "../src/render/overlay.js";
import { actionsFor, describeChange, parseInspect, planPush, type PiState, type PlanInput, type RemoteFile } from "../src/push/plan.js";
import { INSPECT_SCRIPT, packPayload, pushSsh, sudoCommand } from "../src/push/commands.js";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";

const isRoot = process.getuid?.() === 0;

function file(p: string, content: string, mode = 0o644, owner = "root", group = "root"): OverlayFile {
  return { path: p, content: Buffer.from(content), mode, owner, group };
}
function remote(f: OverlayFile, over: Partial<RemoteFile> = {}): RemoteFile {
  return { sha256: createHash("sha256").update(f.content).digest("hex"), mode: f.mode, owner: f.owner, group: f.group, size: f.content.length, ...over };
}

const conf = file("etc/mosquitto/conf.d/pibake.conf", "listener 8883\n");
const passwd = file("etc/mosquitto/passwd", "sensors:$7$secret-hash\n", 0o600, "mosquitto", "mosquitto");
const ddclient = file("etc/ddclient.conf", "password=token\n", 0o600);
const lan = file("etc/NetworkManager/system-connections/pibake-lan.nmconnection", "[ipv4]\n", 0o600);

function pi(files: [OverlayFile, RemoteFile | "other"][], extra: Partial<PiState> = {}): PiState {
  return { release: "trixie", arch: "arm64", packages: new Set(["mosquitto", "ddclient"]), files: new Map(files.map(([f, r]) => [f.path, r])), ...extra };
}
function input(overlay: OverlayFile[], state: PiState, extra: Partial<PlanInput> = {}): PlanInput {
  return { overlay, pi: state, release: "trixie", arch: "arm64", packages: ["mosquitto", "ddclient"], allowNetworkChange: false, ...extra };
}

describe("the push plan", () => {
  const cases: { name: string; input: PlanInput; changes: string[]; removed?: string[] }[] = [
    {
      name: "the same files: nothing",
      input: input(
        [conf, passwd],
        pi([
          [conf, remote(conf)],
          [passwd, remote(passwd)],
        ]),
      ),
      changes: [],
    },
    {
      name: "a changed content, by size only",
      input: input(
        [conf, passwd],
        pi([
          [conf, remote(conf)],
          [passwd, remote(passwd, { sha256: "0".repeat(64), size: 3 })],
        ]),
      ),
      changes: [`~ /etc/mosquitto/passwd: content (3 → ${passwd.content.length} bytes)`],
    },
    { name: "a mode", input: input([passwd], pi([[passwd, remote(passwd, { mode: 0o644 })]])), changes: ["~ /etc/mosquitto/passwd: mode 0644 → 0600"] },
    {
      name: "an owner",
      input: input([passwd], pi([[passwd, remote(passwd, { owner: "root", group: "root" })]])),
      changes: ["~ /etc/mosquitto/passwd: owner root:root → mosquitto:mosquitto"],
    },
    { name: "a new file", input: input([conf, ddclient], pi([[conf, remote(conf)]])), changes: [`+ /etc/ddclient.conf (${ddclient.content.length} bytes)`] },
    {
      name: "a directory where a file goes",
      input: input([conf], pi([[conf, "other"]])),
      changes: [`+ /etc/mosquitto/conf.d/pibake.conf (${conf.content.length} bytes), replaces what is not a regular file`],
    },
    {
      name: "a file of the build's overlay that this one lacks",
      input: input(
        [conf],
        pi(
          [
            [conf, remote(conf)],
            [ddclient, remote(ddclient)],
          ],
          { build: { overlay: [conf.path, ddclient.path] } },
        ),
      ),
      changes: [`- /etc/ddclient.conf (${ddclient.content.length} bytes)`],
      removed: ["etc/ddclient.conf"],
    },
    {
      name: "the last push's record counts over the build's",
      input: input([conf], pi([[conf, remote(conf)]], { build: { overlay: [conf.path, ddclient.path] }, push: { overlay: [conf.path] } })),
      changes: [],
      removed: [],
    },
  ];
  it.each(cases)("$name", ({ input: i, changes, removed }) => {
    const plan = planPush(i);
    expect(plan.changes.map(describeChange)).toEqual(changes);
    expect(plan.files.map((f) => f.path)).toEqual(plan.changes.filter((c) => c.kind !== "remove").map((c) => c.path));
    if (removed) expect(plan.removed).toEqual(removed);
    expect(plan.refusals).toEqual([]);
  });

  it("never shows a file's content", () => {
    const plan = planPush(input([passwd, ddclient], pi([])));
    const text = plan.changes.map(describeChange).join("\n");
    expect(text).not.toMatch(/secret-hash|token/);
  });
});

describe("what a push refuses", () => {
  const cases: { name: string; input: PlanInput; refused: string[]; reason?: RegExp }[] = [
    {
      name: "another release",
      input: input([conf], pi([[conf, remote(conf)]], { release: "bookworm" })),
      refused: ["release"],
      reason: /the Pi runs bookworm, the config says trixie/,
    },
    { name: "another architecture", input: input([conf], pi([[conf, remote(conf)]], { arch: "armhf" })), refused: ["architecture"] },
    {
      name: "a package the Pi lacks (an architecture or version suffix aside)",
      input: input([conf], pi([[conf, remote(conf)]]), { packages: ["mosquitto:arm64", "ddclient=3.11", "fail2ban"] }),
      refused: ["packages"],
      reason: /packages the Pi does not have: fail2ban$/,
    },
    {
      name: "a changed network profile",
      input: input([lan], pi([[lan, remote(lan, { sha256: "1".repeat(64) })]])),
      refused: ["network"],
      reason: /--allow-network-change/,
    },
    {
      name: "a changed network profile, allowed",
      input: input([lan], pi([[lan, remote(lan, { sha256: "1".repeat(64) })]]), { allowNetworkChange: true }),
      refused: [],
    },
    { name: "an unchanged network profile", input: input([lan], pi([[lan, remote(lan)]])), refused: [] },
  ];
  it.each(cases)("$name", ({ input: i, refused, reason }) => {
    const plan = planPush(i);
    expect(plan.refusals.map((r) => r.what)).toEqual(refused);
    if (reason) expect(plan.refusals[0]!.reason).toMatch(reason);
  });
});

describe("what a push restarts", () => {
  const cases: [string[], string[]][] = [
    [["etc/mosquitto/passwd", "etc/mosquitto/certs/server.crt"], ["restart mosquitto"]],
    [["etc/ddclient.conf"], ["try-restart ddclient"]],
    [["home/admin/.node-red/settings.js"], ["try-restart nodered"]],
    [["etc/systemd/system/mosquitto.service.d/50-pibake.conf"], ["daemon-reload", "restart mosquitto"]],
    [
      ["etc/nftables.conf", "etc/fail2ban/jail.d/pibake.local"],
      ["try-reload-or-restart nftables", "try-reload-or-restart fail2ban"],
    ],
    [["etc/NetworkManager/system-connections/pibake-lan.nmconnection"], ["nmcli-reload"]],
    [["etc/cloud/cloud.cfg.d/99_zz-pibake.cfg"], []],
    // The renewal's script is read at its next run; its unit files need the timer restarted.
    [["usr/local/lib/pibake/acme-certificate.sh"], []],
    [["etc/systemd/system/pibake-acme.timer"], ["daemon-reload", "try-restart pibake-acme.timer"]],
  ];
  it.each(cases)("%j → %j", (paths, actions) => {
    expect(actionsFor(paths)).toEqual(actions);
  });
});

describe("the inspect script, run on this machine", () => {
  it("prints each file's sha256, mode, owner and size, what is missing and what is no file, and the release", async () => {
    const { dir, cleanup } = tempDir("pibake-inspect-");
    try {
      const a = path.join(dir, "a.conf");
      writeFileSync(a, "some content\n");
      chmodSync(a, 0o640);
      chownSync(a, 65534, 65534);
      mkdirSync(path.join(dir, "sub"));
      const rel = (p: string) => p.slice(1);
      const r = await execa("bash", [INSPECT_SCRIPT, rel(a), rel(path.join(dir, "gone")), rel(path.join(dir, "sub"))], { timeout: 30_000 });
      const state = parseInspect(r.stdout);
      const owner = (await execa("stat", ["-c", "%U %G", a])).stdout.split(" ");
      expect(state.files.get(rel(a))).toEqual({
        sha256: createHash("sha256").update("some content\n").digest("hex"),
        mode: 0o640,
        owner: owner[0],
        group: owner[1],
        size: 13,
      });
      expect(state.files.has(rel(path.join(dir, "gone")))).toBe(false);
      expect(state.files.get(rel(path.join(dir, "sub")))).toBe("other");
      const osRelease = readFileSync("/etc/os-release", "utf8");
      expect(state.release).toBe(/^VERSION_CODENAME=(.*)$/m.exec(osRelease)![1]);
      expect(state.arch).toBe((await execa("dpkg", ["--print-architecture"])).stdout);
      // dpkg-query's own view of an installed package.
      expect(state.packages.has("bash")).toBe(true);
    } finally {
      cleanup();
    }
  });

  it("an answer cut short is an error, not an empty Pi", () => {
    expect(() => parseInspect("release\ttrixie\narch\tarm64\npackage\tmosquitto\n")).toThrow(/cut short/);
    expect(() => parseInspect("release\ttrixie\narch\tarm64\nfile\tetc/x\tnot-a-hash\t644\troot\troot\t1\nend\n")).toThrow(/malformed/);
  });

  it("reads the records of the build and of the last push", () => {
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64");
    const s = parseInspect(
      `release\ttrixie\narch\tarm64\nbuild-record\t${b64({ overlay: ["etc/a"], domain: "old.example.com" })}\npush-record\t${b64({ overlay: ["etc/b"], tlsPort: 8884 })}\nend\n`,
    );
    expect(s.build).toEqual({ overlay: ["etc/a"], domain: "old.example.com" });
    expect(s.push).toEqual({ overlay: ["etc/b"], tlsPort: 8884 });
  });
});

describe("the ssh command line", () => {
  it("is what ssh itself reads: batch mode, the key alone, accept-new into pibake's known_hosts, a bounded connect", async () => {
    const { dir, cleanup } = tempDir("pibake-ssh-args-");
    // ssh -G leaves out identity files that do not exist.
    const key = path.join(dir, "id_ed25519");
    writeFileSync(key, "", { mode: 0o600 });
    const args = pushSsh(
      { host: "broker.lan", port: 2222, user: "admin", key, knownHosts: "/state/known_hosts", connectTimeoutSeconds: 15 },
      "true",
      "trying",
    ).args;
    // ssh -G prints the configuration it would use, without connecting; the remote command is left off.
    const r = await execa("ssh", ["-G", ...args.slice(0, -1)], { timeout: 10_000, env: { HOME: os.tmpdir() } }).finally(cleanup);
    const g = new Map(r.stdout.split("\n").map((l) => [l.split(" ")[0], l.slice(l.indexOf(" ") + 1)] as const));
    expect({
      hostname: g.get("hostname"),
      port: g.get("port"),
      user: g.get("user"),
      batchmode: g.get("batchmode"),
      stricthostkeychecking: g.get("stricthostkeychecking"),
      userknownhostsfile: g.get("userknownhostsfile"),
      connecttimeout: g.get("connecttimeout"),
      identitiesonly: g.get("identitiesonly"),
      identityfile: r.stdout.split("\n").includes(`identityfile ${key}`),
      serveraliveinterval: g.get("serveraliveinterval"),
    }).toEqual({
      hostname: "broker.lan",
      port: "2222",
      user: "admin",
      batchmode: "yes",
      stricthostkeychecking: "accept-new",
      userknownhostsfile: "/state/known_hosts",
      connecttimeout: "15",
      identitiesonly: "yes",
      identityfile: true,
      serveraliveinterval: "10",
    });
  });
});

describe.skipIf(!isRoot)("the payload, as the apply script unpacks it", () => {
  it("GNU tar as root gives each file its owner by name and its mode; the lists and the record beside them", async () => {
    const { dir, cleanup } = tempDir("pibake-payload-");
    try {
      const secret = file("etc/mosquitto/passwd", "u:$7$hash\n", 0o600, "nobody", "nogroup");
      const tarBytes = await packPayload({
        files: [secret, file("etc/ddclient.conf", "x\n", 0o640)],
        removed: ["etc/old.conf"],
        actions: ["daemon-reload", "restart mosquitto"],
        record: { domain: "new.example.com" },
      });
      await execa("tar", ["-x", "-C", dir, "--same-owner", "--same-permissions", "-f", "-"], { input: tarBytes, timeout: 30_000 });
      const p = path.join(dir, "files/etc/mosquitto/passwd");
      expect(readFileSync(p, "utf8")).toBe("u:$7$hash\n");
      expect(statSync(p).mode & 0o7777).toBe(0o600);
      expect((await execa("stat", ["-c", "%U:%G", p])).stdout).toBe("nobody:nogroup");
      expect(statSync(path.join(dir, "files/etc/ddclient.conf")).mode & 0o7777).toBe(0o640);
      expect(readFileSync(path.join(dir, "remove"), "utf8")).toBe("etc/old.conf\n");
      expect(readFileSync(path.join(dir, "actions"), "utf8")).toBe("daemon-reload\nrestart mosquitto\n");
      expect(JSON.parse(readFileSync(path.join(dir, "push.json"), "utf8"))).toEqual({ domain: "new.example.com" });
      expect(statSync(path.join(dir, "push.json")).mode & 0o7777).toBe(0o644);
    } finally {
      cleanup();
    }
  });
});

describe.skipIf(!isRoot)("the remote command, through the real sudo", () => {
  it("where sudo needs no password, the password line is dropped and the script gets the rest of its input and its arguments unchanged", async () => {
    const nasty = `it's "q" $HOME \`x\` ;|&`;
    const cmd = sudoCommand('printf "%s|" "$@"; printf "\\n"; cat', [nasty, "two words"]);
    const r = await execa("bash", ["-c", cmd], {
      input: Buffer.concat([Buffer.from("the-password\n"), Buffer.from([0, 1, 2, 255, 10, 65])]),
      encoding: "buffer",
      timeout: 30_000,
      reject: false,
    });
    expect(r.exitCode, Buffer.from(r.stderr).toString()).toBe(0);
    const out = Buffer.from(r.stdout);
    expect(out.toString("latin1")).toBe(`${nasty}|two words|\n\x00\x01\x02\xff\nA`);
    expect(out.toString("latin1")).not.toContain("the-password");
  });
});

describe("pibake push, before it connects", () => {
  it("without a terminal and without --yes (or --dry-run) it exits 2 and says to pass --yes; a bad port or a missing key is named", async () => {
    const { dir, cleanup } = tempDir("pibake-push-usage-");
    try {
      const key = path.join(dir, "key");
      writeFileSync(key, "", { mode: 0o600 });
      const cfg = writeJson(path.join(dir, "broker.json"), validConfig());
      const noYes = await pibake(["push", cfg, "192.0.2.1", "--ssh-key", key], { env: secretEnv });
      expect(noYes.exitCode).toBe(2);
      expect(noYes.stderr).toMatch(/no terminal to ask on: pass --yes/);
      const port = await pibake(["push", cfg, "192.0.2.1", "--yes", "--ssh-key", key, "--port", "99999"], { env: secretEnv });
      expect(port.exitCode).toBe(2);
      expect(port.stderr).toMatch(/--port 99999 is not a port/);
      const noKey = await pibake(["push", cfg, "192.0.2.1", "--yes", "--ssh-key", path.join(dir, "absent")], { env: secretEnv });
      expect(noKey.exitCode).toBe(2);
      expect(noKey.stderr).toMatch(/no SSH key at .*absent: name the private key/);
      // No CA in the state directory: a push would make a new one, which no client trusts.
      const noCa = await pibake(["push", cfg, "192.0.2.1", "--yes", "--ssh-key", key, "--state", path.join(dir, "state")], { env: secretEnv });
      expect(noCa.exitCode).toBe(2);
      expect(noCa.stderr).toMatch(/no CA in .*state: pass --state/);
      // A dry run changes nothing, so it needs no --yes: it gets as far as the state directory.
      const dryRun = await pibake(["push", cfg, "192.0.2.1", "--dry-run", "--ssh-key", key, "--state", path.join(dir, "state")], { env: secretEnv });
      expect(dryRun.exitCode).toBe(2);
      expect(dryRun.stderr).toMatch(/no CA in .*state: pass --state/);
    } finally {
      cleanup();
    }
  });
});

describe.skipIf(!isRoot)("the apply script against a tree with links, run here as root", () => {
  const APPLY = path.join(repoRoot, "stages/push/apply.sh");
  /** A throwaway tree on this host standing for the Pi's, named in the payload by its absolute path (the script writes /<path>). */
  async function applyTo(files: OverlayFile[]) {
    const tarBytes = await packPayload({ files, removed: [], actions: [], record: {} });
    const hadState = existsSync("/var/lib/pibake");
    try {
      // Health after 0 s: this host's mosquitto is not under systemd, so a push that gets as far as placing files is rolled back (exit 3).
      return await execa("bash", [APPLY, "8883", "0"], { input: tarBytes, reject: false, timeout: 60_000 });
    } finally {
      if (!hadState) rmSync("/var/lib/pibake", { recursive: true, force: true });
    }
  }

  it("writes nothing through a link that a user planted under the staging name beside a target", async () => {
    const { dir, cleanup } = tempDir("pibake-apply-links-");
    try {
      const home = path.join(dir, "home/admin/.node-red");
      mkdirSync(home, { recursive: true });
      const canary = path.join(dir, "canary");
      writeFileSync(canary, "canary\n");
      // The old script staged beside the target as .pibake-push.<name>: a user owning the directory could link that name anywhere.
      symlinkSync(canary, path.join(home, ".pibake-push.settings.js"));
      await execa("chown", ["-h", "-R", "nobody:nogroup", path.join(dir, "home/admin")]);
      const r = await applyTo([file(`${home.slice(1)}/settings.js`, "module.exports = {};\n", 0o644, "nobody", "nogroup")]);
      expect(r.exitCode, r.stderr).toBe(3);
      expect(r.stderr).toContain("placed 1 file(s)");
      expect(readFileSync(canary, "utf8")).toBe("canary\n");
    } finally {
      cleanup();
    }
  });

  it("refuses, before changing anything, a target whose path runs through a link that another user owns (exit 4, naming it)", async () => {
    const { dir, cleanup } = tempDir("pibake-apply-links-");
    try {
      const elsewhere = path.join(dir, "etc-of-root");
      mkdirSync(elsewhere);
      mkdirSync(path.join(dir, "home/admin"), { recursive: true });
      const link = path.join(dir, "home/admin/.node-red");
      symlinkSync(elsewhere, link);
      await execa("chown", ["-h", "nobody:nogroup", link]);
      const r = await applyTo([file(`${link.slice(1)}/settings.js`, "module.exports = {};\n", 0o644, "nobody", "nogroup")]);
      expect(r.exitCode, r.stderr).toBe(4);
      expect(r.stderr).toContain(`${link} is a link owned by nobody`);
      expect(readdirSync(elsewhere)).toEqual([]);
    } finally {
      cleanup();
    }
  });
});
