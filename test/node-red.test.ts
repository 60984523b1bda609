import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./helpers/net.js";
import { loadConfig } from "../src/config/load.js";
import type { Model } from "../src/config/model.js";
import { topicCovers } from "../src/config/node-red.js";
import { ConfigError } from "../src/errors.js";
import { packageRoot } from "../src/paths.js";
import {
  chooseVersion,
  npmView,
  NPM_RELEASE,
  OS_NODE,
  parseNpmView,
  PINNED,
  recordedNodeRedVersions,
  resolveNodeRedVersions,
  satisfies,
  type VersionInfo,
} from "../src/registry/node-red.js";
import { render, type Rendered } from "../src/render/index.js";
import { nodeRedIds } from "../src/render/node-red.js";
import { prepareSecrets, StateDir, type Secrets } from "../src/secrets/index.js";
import { decryptCredentials, encryptCredentials, STATE_FILES, verifyBcrypt, verifyScrypt } from "../src/secrets/node-red.js";

/**
 * Node-RED on the broker: config, versions, secrets, rendered files, and the
 * rendered settings/flows/credentials run by a real Node-RED beside a real
 * Mosquitto running the rendered broker config. Servers listen on 127.0.0.1,
 * on free ports, and are always stopped.
 */

const run = promisify(execFile);
const work = mkdtempSync(path.join(tmpdir(), "pibake-node-red-"));
const cleanups: (() => void | Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  rmSync(work, { recursive: true, force: true });
});

// Renders in these tests never ask the registry unless a test says so.
process.env.PIBAKE_OFFLINE = "1";

const PASSWORDS = { user: "user-password-1", nodeRed: "editor-password-1", sensors: "sensors-password-1", flows: "flows-password-1" };
const ENV = { T_USER_PW: PASSWORDS.user, T_NR_PW: PASSWORDS.nodeRed, T_SENSORS_PW: PASSWORDS.sensors, T_FLOWS_PW: PASSWORDS.flows };

let counter = 0;
function writeConfig(patch: (c: Record<string, any>) => void = () => {}): string {
  const dir = path.join(work, `config-${++counter}`);
  mkdirSync(dir, { recursive: true });
  const config: Record<string, any> = {
    image: { name: "nr-test", release: "trixie" },
    user: { name: "pi", password: { env: "T_USER_PW" }, sshKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F t@t"] },
    network: { address: "192.168.1.10/24", gateway: "192.168.1.1" },
    mqtt: {
      users: [{ name: "sensors", password: { env: "T_SENSORS_PW" }, topics: [{ access: "write", topic: "home/#" }] }],
    },
    tls: { domain: "broker.example.org" },
    nodeRed: { admin: { password: { env: "T_NR_PW" } } },
  };
  patch(config);
  const file = path.join(dir, "broker.json");
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

interface Prepared {
  model: Model;
  secrets: Secrets;
  rendered: Rendered;
  state: StateDir;
}

async function prepare(configFile: string, stateDir = path.join(path.dirname(configFile), "state")): Promise<Prepared> {
  const { model } = loadConfig(configFile, ENV);
  const state = new StateDir(stateDir);
  const secrets = await prepareSecrets(model, state);
  return { model, secrets, rendered: await render(model, secrets), state };
}

function file(r: Rendered, p: string): { content: string; mode: number; owner: string; group: string } {
  const f = r.overlay.find((x) => x.path === p);
  if (!f) throw new Error(`${p} is not in the overlay: ${r.overlay.map((x) => x.path).join(", ")}`);
  return { content: f.content.toString("utf8"), mode: f.mode, owner: f.owner, group: f.group };
}

function configIssues(configFile: string): string[] {
  try {
    loadConfig(configFile, ENV);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`);
    throw err;
  }
  return [];
}

describe("nodeRed config", () => {
  it("is on by default, with the defaults the issue names", () => {
    const { model } = loadConfig(
      writeConfig((c) => delete c.nodeRed),
      ENV,
    );
    expect(model.nodeRed).toEqual({
      install: "firstboot",
      port: 1880,
      admin: { user: "admin" },
      dashboard: "flowfuse",
      protectDashboard: false,
      mqttUser: "nodered",
      mqttUserGenerated: true,
      exampleTopic: "home/example",
    });
  });

  it("can be turned off", () => {
    const { model } = loadConfig(
      writeConfig((c) => (c.nodeRed = { enabled: false })),
      ENV,
    );
    expect(model.nodeRed).toBeUndefined();
  });

  it("reports what is wrong, field by field", () => {
    const issues = configIssues(
      writeConfig((c) => {
        c.nodeRed = { port: 1883, dashboard: "fancy", install: "later", mqttUser: "nobody", admin: { password: "short" }, exampleTopic: "a/#/b" };
      }),
    );
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^nodeRed\.dashboard: "fancy" is not a dashboard/),
        expect.stringMatching(/^nodeRed\.install: "later" is not an install time/),
        expect.stringMatching(/^nodeRed\.exampleTopic: "a\/#\/b" is not an MQTT topic filter/),
      ]),
    );
    const cross = configIssues(writeConfig((c) => (c.nodeRed = { port: 1883, mqttUser: "nobody", admin: { password: "short" } })));
    expect(cross).toEqual(
      expect.arrayContaining([
        "nodeRed.port: 1883 is also mqtt.lanPort: Node-RED needs a port of its own",
        expect.stringMatching(/^nodeRed\.mqttUser: "nobody" is not one of mqtt\.users \("sensors"\)/),
        "nodeRed.admin.password: (secret) is shorter than 8 characters",
      ]),
    );
    // A named user who cannot read the example topic; a user already called "nodered".
    const acl = configIssues(writeConfig((c) => (c.nodeRed.mqttUser = "sensors")));
    expect(acl).toEqual([expect.stringMatching(/^nodeRed\.exampleTopic: "home\/example" is not readable by MQTT user "sensors"/)]);
    const clash = configIssues(writeConfig((c) => c.mqtt.users.push({ name: "nodered", password: { env: "T_FLOWS_PW" } })));
    expect(clash).toEqual([expect.stringMatching(/^mqtt\.users\[1\]\.name: "nodered" is the user pibake adds for Node-RED: set nodeRed\.mqttUser/)]);
    const unknown = configIssues(writeConfig((c) => (c.nodeRed.dashbord = "none")));
    expect(unknown[0]).toMatch(/^nodeRed: unknown field "dashbord"; expected enabled, install, port, admin, dashboard, protectDashboard/);
  });

  it("checks topic coverage as Mosquitto's ACLs do", () => {
    const table: [string, string, boolean][] = [
      ["home/#", "home/example", true],
      ["home/#", "home/#", true],
      ["home/#", "home", true],
      ["#", "a/+/b", true],
      ["home/+", "home/example", true],
      ["home/+", "home/#", false],
      ["home/+", "home/a/b", false],
      ["home/example", "home/+", false],
      ["home/example", "home/example", true],
      ["home/sensors/#", "home/#", false],
    ];
    for (const [pattern, filter, expected] of table) expect([pattern, filter, topicCovers(pattern, filter)]).toEqual([pattern, filter, expected]);
  });
});

describe("Node-RED version choice", () => {
  it("reads the engines ranges that packages use", () => {
    const table: [string, string, boolean][] = [
      ["20.19.2", ">=18.5", true],
      ["18.20.4", ">=18.5", true],
      ["18.4.0", ">=18.5", false],
      ["20.19.2", ">=22.9", false],
      ["22.9.0", ">=22.9", true],
      ["20.19.2", "^18 || ^20", true],
      ["21.0.0", "^18 || ^20", false],
      ["18.20.4", ">=14", true],
      ["20.19.2", ">= 18.0.0 < 21", true],
      ["21.1.0", ">=18.0.0 <21", false],
      ["20.19.2", "18 - 20", true],
      ["21.0.0", "18 - 20", false],
      ["20.19.2", "20.x", true],
      ["20.19.2", "~20.18", false],
      ["20.19.2", "*", true],
      ["20.19.2", "nonsense", false],
      // A range with one unreadable alternative is unreadable as a whole (npm's semver), not read in part.
      ["20.19.2", "20 || nonsense", false],
      ["20.19.2-rc.1", ">=18", false],
      ["v20.19.2", "^20.0.0", true],
      ["0.1.5", "^0.1.2", true],
      ["0.2.0", "^0.1.2", false],
    ];
    for (const [v, range, expected] of table) expect([v, range, satisfies(v, range)]).toEqual([v, range, expected]);
  });

  it("chooses the newest release whose engines accept the OS's Node, never a pre-release", () => {
    const infos = parseNpmView(
      JSON.stringify([
        { version: "3.1.15", engines: { node: ">=14" } },
        { version: "4.1.14", engines: { node: ">=18.5" } },
        { version: "4.1.15", engines: { node: ">=18.5" } },
        { version: "4.2.0-beta.1", engines: { node: ">=18.5" } },
        { version: "4.9.0" },
        { version: "5.0.7", engines: { node: ">=22.9" } },
      ]),
    );
    expect(chooseVersion(infos, OS_NODE.trixie)).toBe("4.1.15");
    expect(chooseVersion(infos, OS_NODE.bookworm)).toBe("4.1.15");
    expect(chooseVersion(infos, "22.12.0")).toBe("5.0.7");
    expect(chooseVersion(infos, "12.0.0")).toBeUndefined();
    expect(parseNpmView('{"version":"1.0.0","engines":{"node":">=14"}}')).toEqual([{ version: "1.0.0", engines: { node: ">=14" } }]);
    // A dashboard release that needs a newer Node-RED than the one chosen is passed over.
    const dashboards: VersionInfo[] = [
      { version: "1.31.0", engines: { node: ">=14" }, "node-red.version": ">=3.0.0" },
      { version: "2.0.0", engines: { node: ">=18" }, "node-red.version": ">=5.0.0" },
    ];
    expect(chooseVersion(dashboards, OS_NODE.trixie, "4.1.15")).toBe("1.31.0");
    expect(chooseVersion(dashboards, OS_NODE.trixie, "5.0.7")).toBe("2.0.0");
  });

  it("keeps its choice in the state directory, falls back offline, and takes a pinned version", async () => {
    const state = new StateDir(path.join(work, "versions-state"));
    let asked = 0;
    const lookup = (pkg: string) => {
      asked++;
      return pkg === "node-red"
        ? [
            { version: "4.1.13", engines: { node: ">=18.5" } },
            { version: "5.0.7", engines: { node: ">=22.9" } },
          ]
        : [{ version: "1.30.0", engines: { node: ">=14" } }];
    };
    const trixie = { release: "trixie", dashboard: "@flowfuse/node-red-dashboard" } as const;
    // A render before any resolve takes the fallback and records nothing.
    expect(recordedNodeRedVersions(state, trixie).nodeRed.source).toBe("fallback");
    expect(existsSync(state.file("node-red-versions.json"))).toBe(false);
    const { versions: first, asked: askedFirst } = await resolveNodeRedVersions(state, trixie, { lookup, offline: false });
    expect(askedFirst).toBe(true);
    expect(first.nodeRed).toEqual({ package: "node-red", version: "4.1.13", source: "registry" });
    expect(first.dashboard).toEqual({ package: "@flowfuse/node-red-dashboard", version: "1.30.0", source: "registry" });
    expect(await resolveNodeRedVersions(state, trixie, { lookup, offline: false })).toEqual({ versions: first, asked: false });
    // What the render then installs, with no network.
    expect(recordedNodeRedVersions(state, trixie)).toEqual(first);
    expect(asked).toBe(2);
    const failing = () => {
      throw new Error("no network");
    };
    const { versions: classic } = await resolveNodeRedVersions(
      state,
      { release: "bookworm", dashboard: "node-red-dashboard" },
      { lookup: failing, offline: false },
    );
    expect(classic).toMatchObject({
      node: OS_NODE.bookworm,
      nodeRed: { version: PINNED["node-red"], source: "fallback" },
      dashboard: { version: "3.6.6", source: "fallback" },
    });
    const { versions: pinned } = await resolveNodeRedVersions(state, { release: "bookworm", pinned: "4.0.9" }, { lookup: failing, offline: true });
    expect(pinned.nodeRed).toEqual({ package: "node-red", version: "4.0.9", source: "config" });
    expect(pinned.dashboard).toBeUndefined();
  });

  it("asks the real registry through npm, and its answer is a 4.x for both releases", { timeout: 60_000 }, async () => {
    const infos = await npmView("node-red");
    expect(infos.length).toBeGreaterThan(50);
    const trixie = chooseVersion(infos, OS_NODE.trixie)!;
    const bookworm = chooseVersion(infos, OS_NODE.bookworm)!;
    expect(trixie).toMatch(/^4\./);
    expect(bookworm).toMatch(/^4\./);
    // The pinned fallback is a release the registry has and whose engines accept both.
    const pinned = infos.find((i) => i.version === PINNED["node-red"]);
    expect(pinned && satisfies(OS_NODE.bookworm, pinned.engines!.node!) && satisfies(OS_NODE.trixie, pinned.engines!.node!)).toBe(true);
    // The dashboards too, checked against the chosen Node-RED.
    for (const pkg of ["@flowfuse/node-red-dashboard", "node-red-dashboard"]) {
      const d = await npmView(pkg);
      expect(chooseVersion(d, OS_NODE.bookworm, bookworm), pkg).toBeDefined();
      expect(
        d.some((i) => i.version === PINNED[pkg]),
        pkg,
      ).toBe(true);
    }
  });
});

describe("Node-RED secrets", () => {
  it("encrypts credentials the way Node-RED decrypts them, repeatably", () => {
    const creds = { abc: { user: "nodered", password: "p4ss" } };
    const a = encryptCredentials("secret", creds);
    expect(a).toBe(encryptCredentials("secret", creds));
    expect(a).toMatch(/^[0-9a-f]{32}[A-Za-z0-9+/=]+$/);
    expect(decryptCredentials("secret", a)).toEqual(creds);
    expect(encryptCredentials("secret", { abc: { user: "nodered", password: "p4sS" } }).slice(0, 32)).not.toBe(a.slice(0, 32));
  });
});

describe("Node-RED rendered files", () => {
  let p: Prepared;
  beforeAll(async () => {
    p = await prepare(writeConfig((c) => (c.nodeRed.protectDashboard = true)));
  });

  it("puts the units, the first-boot script and ~/.node-red on the Pi with the right owners and modes", () => {
    const nr = p.rendered.overlay
      .filter((f) => /nodered\.service|pibake-firstboot|pibake\/firstboot|\.node-red|install-npm/.test(f.path))
      .map((f) => [f.path, f.mode.toString(8), `${f.owner}:${f.group}`]);
    expect(nr).toEqual([
      ["etc/systemd/system/nodered.service", "644", "root:root"],
      ["etc/systemd/system/pibake-firstboot.service", "644", "root:root"],
      ["home/pi/.node-red/flows.json", "644", "pi:pi"],
      ["home/pi/.node-red/flows_cred.json", "600", "pi:pi"],
      ["home/pi/.node-red/package.json", "644", "pi:pi"],
      ["home/pi/.node-red/settings.js", "600", "pi:pi"],
      ["usr/local/lib/pibake/firstboot.sh", "755", "root:root"],
      ["usr/local/lib/pibake/install-npm.sh", "755", "root:root"],
    ]);
    // 00-broker's chroot script sets owners by name inside the image.
    const chroot = p.rendered.stage.find((f) => f.path === "00-broker/02-run-chroot.sh")!.content.toString();
    expect(chroot).toContain("chown 'pi':'pi' '/home/pi/.node-red/settings.js'");
    const sub = p.rendered.stage.find((f) => f.path === "01-node-red/01-run-chroot.sh")!;
    expect(sub.mode).toBe(0o755);
    expect(sub.content.toString()).toContain("systemctl enable pibake-firstboot.service");
    expect(sub.content.toString()).not.toContain("--install-only");
    expect(
      p.rendered.stage
        .find((f) => f.path === "01-node-red/00-packages-nr")!
        .content.toString()
        .trim()
        .split("\n"),
    ).toEqual(["nodejs"]);
    expect(p.rendered.manifest).toMatchObject({
      nodeRed: {
        release: "trixie",
        node: OS_NODE.trixie,
        nodeRed: { package: "node-red", version: PINNED["node-red"] },
        install: "firstboot",
        npm: NPM_RELEASE.version,
      },
    });
  });

  it("adds Node-RED's MQTT user to the broker's password and ACL files, with a kept password", () => {
    const passwd = file(p.rendered, "etc/mosquitto/passwd").content;
    expect(passwd).toMatch(/^nodered:\$7\$/m);
    expect(file(p.rendered, "etc/mosquitto/acl").content).toContain("user nodered\ntopic read home/example\n");
    expect(p.state.read(STATE_FILES.mqttPassword)!.trim()).toMatch(/^[A-Za-z0-9_-]{32}$/);
    const creds = JSON.parse(file(p.rendered, "home/pi/.node-red/flows_cred.json").content) as { $: string };
    const broker = nodeRedIds("nr-test").broker;
    expect(decryptCredentials(p.state.read(STATE_FILES.credentialSecret)!.trim(), creds.$)).toEqual({
      [broker]: { user: "nodered", password: p.state.read(STATE_FILES.mqttPassword)!.trim() },
    });
  });

  it("writes settings.js with the login as a bcrypt hash and the dashboard protected", () => {
    const settings = file(p.rendered, "home/pi/.node-red/settings.js").content;
    const hash = /password: "(\$2b\$10\$[^"]+)"/.exec(settings)![1]!;
    expect(verifyBcrypt(PASSWORDS.nodeRed, hash)).toBe(true);
    expect(settings).not.toContain(PASSWORDS.nodeRed);
    expect(settings).toContain(`credentialSecret: "${p.state.read(STATE_FILES.credentialSecret)!.trim()}"`);
    expect(settings).toContain("uiPort: process.env.PORT || 1880,");
    expect(settings).toContain("httpNodeAuth: {");
    expect(verifyScrypt(PASSWORDS.nodeRed, /hash: "(scrypt\$[^"]+)"/.exec(settings)![1]!)).toBe(true);
    const flows = JSON.parse(file(p.rendered, "home/pi/.node-red/flows.json").content) as { type: string; broker?: string; port?: number }[];
    expect(flows.map((n) => n.type).sort()).toEqual(["debug", "mqtt in", "mqtt-broker", "tab", "ui-base", "ui-group", "ui-page", "ui-text", "ui-theme"]);
    expect(flows.find((n) => n.type === "mqtt-broker")).toMatchObject({ broker: "localhost", port: 1883 });
    expect(JSON.parse(file(p.rendered, "home/pi/.node-red/package.json").content).dependencies).toEqual({
      "@flowfuse/node-red-dashboard": PINNED["@flowfuse/node-red-dashboard"],
    });
  });

  it("renders byte for byte again from the same config and state", async () => {
    const again = await prepare(
      writeConfig((c) => (c.nodeRed.protectDashboard = true)),
      p.state.dir,
    );
    expect(again.rendered.overlayTar.equals(p.rendered.overlayTar)).toBe(true);
    expect(again.rendered.stage.map((f) => f.content.toString("base64"))).toEqual(p.rendered.stage.map((f) => f.content.toString("base64")));
  });

  it("generates and keeps the editor password when the config gives none", async () => {
    const q = await prepare(writeConfig((c) => delete c.nodeRed.admin));
    const generated = q.state.read(STATE_FILES.adminPassword)!.trim();
    expect(generated).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expect(q.secrets.nodeRed!.adminPasswordFile).toBe(q.state.file(STATE_FILES.adminPassword));
    expect(verifyBcrypt(generated, q.secrets.nodeRed!.adminHash)).toBe(true);
  });

  it("installs at build time when asked, and renders nothing for Node-RED when it is off", async () => {
    const build = await prepare(writeConfig((c) => (c.nodeRed.install = "build")));
    expect(build.rendered.stage.find((f) => f.path === "01-node-red/01-run-chroot.sh")!.content.toString()).toContain(
      "/usr/local/lib/pibake/firstboot.sh --install-only",
    );
    const off = await prepare(writeConfig((c) => (c.nodeRed = { enabled: false })));
    expect(off.rendered.overlay.filter((f) => /node-red|nodered|firstboot/.test(f.path))).toEqual([]);
    expect(
      off.rendered.stage
        .find((f) => f.path === "01-node-red/00-packages-nr")!
        .content.toString()
        .trim(),
    ).toBe("");
    expect(off.rendered.manifest).toEqual({ nodeRed: false });
    expect(file(off.rendered, "etc/mosquitto/passwd").content).not.toContain("nodered");
  });

  it("gives systemd-analyze verify units it accepts, and shellcheck clean first-boot and status scripts", async () => {
    const build = await prepare(writeConfig((c) => Object.assign(c.nodeRed, { install: "build", dashboard: "none" })));
    for (const r of [p.rendered, build.rendered]) {
      // verify checks that ExecStart= programs exist: a root with the overlay, stand-ins for
      // what npm installs, and the host's own units (sysinit.target and friends).
      const root = mkdtempSync(path.join(work, "verify-"));
      for (const f of r.overlay) {
        mkdirSync(path.dirname(path.join(root, f.path)), { recursive: true });
        writeFileSync(path.join(root, f.path), f.content, { mode: f.mode });
      }
      mkdirSync(path.join(root, "usr/local/bin"), { recursive: true });
      writeFileSync(path.join(root, "usr/local/bin/node-red-pi"), "#!/bin/sh\n", { mode: 0o755 });
      mkdirSync(path.join(root, "usr/lib/systemd"), { recursive: true });
      cpSync("/usr/lib/systemd/system", path.join(root, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
      const units = ["nodered.service", "pibake-firstboot.service", "pibake-status.service", "pibake-status.timer"].map((u) =>
        path.join(root, "etc/systemd/system", u),
      );
      const verify = await run("systemd-analyze", [`--root=${root}`, "verify", ...units]).catch((e: { stdout: string; stderr: string }) => e);
      expect(verify.stderr).toBe("");
      const scripts = ["firstboot.sh", "install-npm.sh", "status.sh"].map((n) => path.join(root, "usr/local/lib/pibake", n));
      const sc = await run("shellcheck", ["--severity=style", ...scripts]).catch((e: { stdout: string }) => e);
      expect(sc.stdout).toBe("");
      const stageScript = path.join(root, "01-run-chroot.sh");
      writeFileSync(stageScript, r.stage.find((f) => f.path === "01-node-red/01-run-chroot.sh")!.content);
      const sc2 = await run("shellcheck", ["--severity=style", stageScript]).catch((e: { stdout: string }) => e);
      expect(sc2.stdout).toBe("");
    }
  });
});

describe("install-npm.sh: npm's own release on the Pi, instead of Debian's npm", () => {
  let script = "";
  beforeAll(async () => {
    const p = await prepare(writeConfig());
    const f = p.rendered.overlay.find((o) => o.path === "usr/local/lib/pibake/install-npm.sh")!;
    script = path.join(work, "install-npm.sh");
    writeFileSync(script, f.content, { mode: 0o755 });
  });
  const installNpm = (prefix: string, env: Record<string, string> = {}) =>
    new Promise<{ code: number | null; out: string }>((resolve) => {
      execFile("bash", [script, prefix], { env: { ...process.env, ...env }, timeout: 120_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
      );
    });

  it("installs the pinned npm from the real registry, which then runs, and does nothing the second time", { timeout: 300_000 }, async () => {
    const prefix = mkdtempSync(path.join(work, "prefix-"));
    const first = await installNpm(prefix);
    expect(first.code, first.out).toBe(0);
    expect(first.out).toContain(`npm ${NPM_RELEASE.version} installed in ${prefix}`);
    const npm = path.join(prefix, "bin/npm");
    expect(execFileSync(npm, ["--version"], { encoding: "utf8" }).trim()).toBe(NPM_RELEASE.version);
    // Its built-in config sends global installs to the prefix, as firstboot.sh's Node-RED install.
    expect(execFileSync(npm, ["config", "get", "prefix"], { encoding: "utf8", env: { ...process.env, npm_config_prefix: "" }, cwd: prefix }).trim()).toBe(
      prefix,
    );
    const again = await installNpm(prefix);
    expect(again.code, again.out).toBe(0);
    expect(again.out.trim()).toBe(`npm ${NPM_RELEASE.version} is installed`);
  });

  it("refuses bytes that are not the pinned release and changes nothing", { timeout: 60_000 }, async () => {
    const key = path.join(work, "mirror.key");
    const cert = path.join(work, "mirror.crt");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-days",
        "1",
        "-keyout",
        key,
        "-out",
        cert,
      ],
      { stdio: "ignore" },
    );
    // A mirror that answers with other bytes: the pinned integrity, not the server, decides.
    const server = (await import("node:https")).createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (_req, res) => res.end(randomBytes(4096)));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const prefix = mkdtempSync(path.join(work, "prefix-"));
      const port = (server.address() as net.AddressInfo).port;
      const r = await installNpm(prefix, { PIBAKE_NPM_TARBALL: `https://127.0.0.1:${port}/npm.tgz`, NODE_EXTRA_CA_CERTS: cert });
      expect(r.code).toBe(1);
      expect(r.out).toContain("its bytes are not the pinned ones");
      expect(r.out).toContain(NPM_RELEASE.integrity);
      expect(existsSync(path.join(prefix, "lib/node_modules/npm"))).toBe(false);
      expect(existsSync(path.join(prefix, "bin/npm"))).toBe(false);
    } finally {
      server.close();
    }
  });
});

// ---------------------------------------------------------------------------
// Real Node-RED and real Mosquitto.

async function waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, ms: number, logs?: () => string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${logs ? `\n--- log ---\n${logs().slice(-4000)}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Proc {
  child: ChildProcess;
  log: () => string;
  stop: () => Promise<void>;
}

function startProcess(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Proc {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const proc: Proc = {
    child,
    log: () => out,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGINT");
      const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(killer);
    },
  };
  cleanups.push(proc.stop);
  return proc;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
}

/** The rendered broker config, with its paths moved into DIR and its listeners on 127.0.0.1. */
async function startMosquitto(r: Rendered, dir: string): Promise<Proc> {
  for (const sub of ["certs", "conf.d"]) mkdirSync(path.join(dir, sub), { recursive: true });
  for (const f of r.overlay.filter((x) => x.path.startsWith("etc/mosquitto/"))) {
    writeFileSync(path.join(dir, f.path.slice("etc/mosquitto/".length)), f.content, { mode: f.mode });
  }
  const conf = readFileSync(path.join(dir, "conf.d/pibake.conf"), "utf8")
    .replaceAll("/etc/mosquitto/", `${dir}/`)
    .replace(/^listener (\d+)$/gm, "listener $1 127.0.0.1");
  writeFileSync(
    path.join(dir, "test.conf"),
    `# test: keep root's rights to read the files here; log to stdout; persist here\nuser root\nlog_dest stdout\npersistence_location ${dir}/\n${conf}`,
  );
  const lan = Number(/^listener (\d+) 127\.0\.0\.1$/m.exec(conf)![1]);
  const proc = startProcess("mosquitto", ["-c", path.join(dir, "test.conf")]);
  await waitFor("mosquitto to listen", () => canConnect(lan), 15_000, proc.log);
  return proc;
}

interface NodeRed extends Proc {
  port: number;
  base: string;
}

async function startNodeRed(prefix: string, userDir: string): Promise<NodeRed> {
  const port = await freePort();
  const proc = startProcess(process.execPath, [
    path.join(prefix, "node_modules/node-red/red.js"),
    "--userDir",
    userDir,
    "--port",
    String(port),
    "-D",
    "uiHost=127.0.0.1",
  ]);
  await waitFor("Node-RED to start its flows", () => proc.log().includes("Started flows") || proc.child.exitCode !== null, 90_000, proc.log);
  if (proc.child.exitCode !== null) throw new Error(`Node-RED exited:\n${proc.log()}`);
  return { ...proc, port, base: `http://127.0.0.1:${port}` };
}

function writeUserDir(r: Rendered, user: string, dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const f of r.overlay.filter((x) => x.path.startsWith(`home/${user}/.node-red/`))) {
    writeFileSync(path.join(dir, path.basename(f.path)), f.content, { mode: f.mode });
  }
}

function fixture(nodeRedVersion: string, ...extra: string[]): string {
  return execFileSync(path.join(packageRoot, "scripts/fixtures/node-red.sh"), [nodeRedVersion, ...extra], { encoding: "utf8", timeout: 590_000 }).trim();
}

async function token(base: string, username: string, password: string): Promise<Response> {
  return fetch(`${base}/auth/token`, {
    method: "POST",
    body: new URLSearchParams({ client_id: "node-red-admin", grant_type: "password", scope: "*", username, password }),
    signal: AbortSignal.timeout(15_000),
  });
}

interface CommsMessage {
  topic: string;
  data: any;
}

/** Node-RED's editor channel (/comms): what the debug sidebar and node status show. */
async function openComms(prefix: string, base: string, accessToken: string): Promise<{ messages: CommsMessage[]; close: () => void }> {
  const WebSocket = createRequire(path.join(prefix, "node_modules/node-red/package.json"))("ws") as any;
  const ws = new WebSocket(`${base.replace("http", "ws")}/comms`);
  const messages: CommsMessage[] = [];
  let authed = false;
  ws.on("message", (raw: Buffer) => {
    const m = JSON.parse(raw.toString()) as unknown;
    if (!Array.isArray(m) && (m as { auth?: string }).auth === "ok") authed = true;
    else if (Array.isArray(m)) messages.push(...(m as CommsMessage[]));
  });
  await waitFor("the comms socket to open", () => ws.readyState === WebSocket.OPEN, 10_000);
  ws.send(JSON.stringify({ auth: accessToken }));
  await waitFor("the comms socket to accept the token", () => authed, 10_000);
  ws.send(JSON.stringify({ subscribe: "status/#" }));
  ws.send(JSON.stringify({ subscribe: "debug" }));
  const close = () => ws.close();
  cleanups.push(close);
  return { messages, close };
}

/** Publish on the example topic with mosquitto_pub and wait for the flow's debug node to show it. */
async function publishAndObserve(p: Prepared, nr: NodeRed, prefix: string, accessToken: string, topic: string): Promise<void> {
  const ids = nodeRedIds(p.model.image.name);
  const comms = await openComms(prefix, nr.base, accessToken);
  // The mqtt in node's status turns "connected" once the broker accepted Node-RED's login.
  await waitFor(
    "the mqtt in node to connect to Mosquitto",
    () =>
      comms.messages.some((m) => m.topic === `status/${ids.mqttIn}` && /connected/.test(String(m.data?.text)) && !/disconnected/.test(String(m.data?.text))),
    30_000,
    nr.log,
  );
  const payload = `hello-${randomBytes(4).toString("hex")}`;
  await run(
    "mosquitto_pub",
    ["-h", "127.0.0.1", "-p", String(p.model.mqtt.lanPort), "-u", "sensors", "-P", PASSWORDS.sensors, "-t", topic, "-m", payload, "-q", "1"],
    { timeout: 15_000 },
  );
  const seen = await waitFor(
    "the message to reach the flow's debug node",
    () => comms.messages.find((m) => m.topic === "debug" && m.data?.id === ids.debug && String(m.data?.msg).includes(payload)),
    20_000,
    nr.log,
  );
  expect(JSON.parse(String(seen.data.msg))).toMatchObject({ topic, payload });
  comms.close();
}

describe("rendered Node-RED files in a real Node-RED, with a real Mosquitto", () => {
  it("FlowFuse dashboard, protected; generated MQTT user: login, flows, credentials, MQTT, dashboard", { timeout: 600_000 }, async () => {
    const [lanPort, tlsPort] = [await freePort(), await freePort()];
    const p = await prepare(writeConfig((c) => Object.assign(c.mqtt, { lanPort, tlsPort }) && (c.nodeRed.protectDashboard = true)));
    const v = p.secrets.nodeRed!.versions;
    const prefix = fixture(v.nodeRed.version, `${v.dashboard!.package}@${v.dashboard!.version}`);
    const dir = path.join(work, "run-flowfuse");
    await startMosquitto(p.rendered, path.join(dir, "mosquitto"));
    writeUserDir(p.rendered, "pi", path.join(dir, "userdir"));
    const nr = await startNodeRed(prefix, path.join(dir, "userdir"));

    // The flows loaded, with every node type known and the credentials decrypted.
    expect(nr.log()).not.toMatch(/Waiting for missing types|Error loading credentials|credentials could not be decrypted|Error loading flows/);
    expect(nr.log()).toContain("Node-RED Dashboard 2.0");

    // The admin API wants a token; /auth/token gives one for the right password only.
    expect((await fetch(`${nr.base}/flows`, { signal: AbortSignal.timeout(10_000) })).status).toBe(401);
    expect((await token(nr.base, "admin", "wrong-password")).status).toBe(403);
    const ok = await token(nr.base, "admin", PASSWORDS.nodeRed);
    expect(ok.status).toBe(200);
    const accessToken = ((await ok.json()) as { access_token: string }).access_token;
    const auth = { headers: { Authorization: `Bearer ${accessToken}` }, signal: AbortSignal.timeout(10_000) };
    const flows = (await (await fetch(`${nr.base}/flows`, auth)).json()) as { id: string; type: string }[];
    const ids = nodeRedIds("nr-test");
    expect(flows.find((n) => n.id === ids.broker)).toMatchObject({ type: "mqtt-broker", broker: "localhost", port: lanPort });
    const creds = (await (await fetch(`${nr.base}/credentials/mqtt-broker/${ids.broker}`, auth)).json()) as Record<string, unknown>;
    expect(creds).toEqual({ user: "nodered", has_password: true });

    await publishAndObserve(p, nr, prefix, accessToken, "home/example");

    // The dashboard page asks for the login, and so does its socket.io channel.
    const dashboard = `${nr.base}/dashboard/`;
    expect((await fetch(dashboard, { signal: AbortSignal.timeout(10_000) })).status).toBe(401);
    const basic = { Authorization: `Basic ${Buffer.from(`admin:${PASSWORDS.nodeRed}`).toString("base64")}` };
    const page = await fetch(dashboard, { headers: basic, signal: AbortSignal.timeout(10_000) });
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/<html/i);
    const socketConnect = async (headers: Record<string, string>) => {
      const io = `${nr.base}/dashboard/socket.io/?EIO=4&transport=polling`;
      const open = await (await fetch(io, { headers, signal: AbortSignal.timeout(10_000) })).text();
      const sid = (JSON.parse(open.slice(1)) as { sid: string }).sid;
      await fetch(`${io}&sid=${sid}`, {
        method: "POST",
        body: "40",
        headers: { ...headers, "Content-Type": "text/plain" },
        signal: AbortSignal.timeout(10_000),
      });
      return (await fetch(`${io}&sid=${sid}`, { headers, signal: AbortSignal.timeout(10_000) })).text();
    };
    expect(await socketConnect({})).toMatch(/^44.*authentication required/);
    expect(await socketConnect(basic)).toMatch(/^40\{"sid"/);
    await nr.stop();
  });

  it("classic dashboard, a named MQTT user: flows load, /ui is served, MQTT reaches the flow", { timeout: 600_000 }, async () => {
    const [lanPort, tlsPort] = [await freePort(), await freePort()];
    const p = await prepare(
      writeConfig((c) => {
        Object.assign(c.mqtt, { lanPort, tlsPort });
        c.mqtt.users.push({ name: "flows", password: { env: "T_FLOWS_PW" }, topics: [{ access: "readwrite", topic: "home/#" }] });
        Object.assign(c.nodeRed, { dashboard: "classic", mqttUser: "flows", exampleTopic: "home/sensors/+" });
      }),
    );
    expect(file(p.rendered, "etc/mosquitto/passwd").content).not.toContain("nodered");
    const v = p.secrets.nodeRed!.versions;
    expect(v.dashboard!.package).toBe("node-red-dashboard");
    const prefix = fixture(v.nodeRed.version, `${v.dashboard!.package}@${v.dashboard!.version}`);
    const dir = path.join(work, "run-classic");
    await startMosquitto(p.rendered, path.join(dir, "mosquitto"));
    writeUserDir(p.rendered, "pi", path.join(dir, "userdir"));
    const nr = await startNodeRed(prefix, path.join(dir, "userdir"));
    expect(nr.log()).not.toMatch(/Waiting for missing types|Error loading credentials|credentials could not be decrypted|Error loading flows/);
    expect(nr.log()).toMatch(/Dashboard version [\d.]+ started at \/ui/);
    expect((await fetch(`${nr.base}/ui/`, { signal: AbortSignal.timeout(10_000) })).status).toBe(200);
    const accessToken = ((await (await token(nr.base, "admin", PASSWORDS.nodeRed)).json()) as { access_token: string }).access_token;
    await publishAndObserve(p, nr, prefix, accessToken, "home/sensors/kitchen");
    await nr.stop();
  });
});
