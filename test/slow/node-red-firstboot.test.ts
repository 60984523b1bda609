import { execa } from "execa";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../helpers/net.js";
import { withCleanup } from "../../src/cleanup.js";
import { loadConfig } from "../../src/config/load.js";
import { ImageRoot } from "../../src/host/image-root.js";
import { mountChrootFilesystems, provideResolvConf, runInChroot } from "../../src/engines/chroot.js";
import { unmountTree } from "../../src/host/mounts.js";
import { packageList } from "../../src/render/stage.js";
import { runStage } from "../../src/engines/stage-runner.js";
import { packageRoot } from "../../src/paths.js";
import { render } from "../../src/render/index.js";
import { writeRendered } from "../../src/render/write.js";
import { prepareSecrets, StateDir, type Secrets } from "../../src/secrets/index.js";

/**
 * The rendered stage and the first-boot script on a real Debian arm64 root
 * filesystem (trixie, systemd, the stage's packages with the OS's nodejs),
 * through qemu-user: the stage gives ~/.node-red to the first user and
 * enables pibake-firstboot.service; the script then installs npm's own
 * release, Node-RED and the
 * dashboard from the npm registry, enables nodered.service and writes its
 * marker; run again, it does nothing. npm under qemu-user takes minutes, so
 * this is `npm run test:slow` (PIBAKE_SLOW_TESTS=1), not the CI suite.
 */
const isRoot = process.getuid?.() === 0;
const hasBinfmt = existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64");
const wanted = process.env.PIBAKE_SLOW_TESTS === "1";

const skipped = !wanted || !isRoot || !hasBinfmt;

describe.skipIf(skipped)("Node-RED's first boot in a Debian arm64 chroot", () => {
  // Not made when skipped: a skipped block's afterAll would never remove it.
  const tmp = skipped ? "" : mkdtempSync(path.join(tmpdir(), "pibake-nr-firstboot-"));
  const rootfs = path.join(tmp, "rootfs");
  const out = path.join(tmp, "render");
  const user = "pi";
  const userDir = path.join(rootfs, "home", user, ".node-red");
  let secrets: Secrets;
  const timings: Record<string, number> = {};

  /**
   * Run a script in the rootfs with /proc, /dev, /sys, a private /run and the host's resolver, as on the Pi minus systemd.
   * A host that reaches the registry through a TLS-inspecting proxy trusts its CA with NODE_EXTRA_CA_CERTS: npm in the
   * chroot gets the same file, as a Pi behind such a proxy would need it.
   */
  async function inChroot(script: string): Promise<{ lines: string[]; ms: number }> {
    const env: Record<string, string> = {};
    const extraCa = process.env.NODE_EXTRA_CA_CERTS;
    if (extraCa && existsSync(extraCa)) {
      mkdirSync(path.join(rootfs, "usr/local/share/pibake-test"), { recursive: true });
      writeFileSync(path.join(rootfs, "usr/local/share/pibake-test/extra-ca.pem"), readFileSync(extraCa));
      env.NODE_EXTRA_CA_CERTS = "/usr/local/share/pibake-test/extra-ca.pem";
    }
    const lines: string[] = [];
    const start = Date.now();
    await withCleanup(async (scope) => {
      await mountChrootFilesystems(new ImageRoot(rootfs), scope);
      provideResolvConf(new ImageRoot(rootfs), scope);
      await runInChroot(rootfs, { script, env, onLine: (l) => lines.push(l), signal: scope.signal });
    });
    return { lines, ms: Date.now() - start };
  }

  beforeAll(async () => {
    const dir = path.join(tmp, "config");
    mkdirSync(dir);
    const config = {
      image: { name: "nr-firstboot", release: "trixie" },
      user: { name: user, password: { env: "T_USER_PW" }, sshKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F t@t"] },
      network: { address: "192.168.1.10/24", gateway: "192.168.1.1" },
      mqtt: { users: [{ name: "sensors", password: { env: "T_SENSORS_PW" }, topics: [{ access: "write", topic: "home/#" }] }] },
      tls: { domain: "broker.example.org" },
      nodeRed: { admin: { password: { env: "T_NR_PW" } } },
    };
    writeFileSync(path.join(dir, "broker.json"), JSON.stringify(config));
    const { model } = loadConfig(path.join(dir, "broker.json"), {
      T_USER_PW: "user-password-1",
      T_SENSORS_PW: "sensors-password-1",
      T_NR_PW: "editor-password-1",
    });
    secrets = await prepareSecrets(model, new StateDir(path.join(dir, "state")));
    writeRendered(out, await render(model, secrets));

    // The fixture has the stage's packages already, so that its package steps find nothing to fetch.
    const packages = ["00-broker", "01-node-red"].flatMap((s) => packageList(readFileSync(path.join(out, "stage", s, "00-packages-nr"), "utf8")));
    let start = Date.now();
    const fixture = await execa("bash", [path.join(packageRoot, "scripts/fixtures/arm64-rootfs.sh"), "trixie", "systemd", ...packages], { timeout: 1_800_000 });
    timings.fixture = Date.now() - start;
    mkdirSync(rootfs);
    await execa("tar", ["--numeric-owner", "-xpf", fixture.stdout.trim(), "-C", rootfs]);
    // pi-gen's stage1 has made the first user before stage-pibake runs.
    await execa("chroot", [rootfs, "useradd", "--create-home", "--shell", "/bin/bash", user]);
    start = Date.now();
    await runStage({ stageDir: path.join(out, "stage"), rootfs, aptUpdate: false });
    timings.stage = Date.now() - start;
  }, 2_400_000);

  afterAll(async () => {
    await unmountTree(rootfs);
    rmSync(tmp, { recursive: true, force: true });
    console.log(`timings (ms): ${JSON.stringify(timings)}`);
  });

  const idOf = (file: string, name: string) =>
    Number(
      readFileSync(path.join(rootfs, file), "utf8")
        .split("\n")
        .find((l) => l.startsWith(`${name}:`))!
        .split(":")[2],
    );
  const wants = (unit: string) => path.join(rootfs, "etc/systemd/system/multi-user.target.wants", unit);

  it("the stage enables pibake-firstboot.service and gives ~/.node-red to the first user", () => {
    const uid = idOf("etc/passwd", user);
    const gid = idOf("etc/group", user);
    expect(lstatSync(wants("pibake-firstboot.service")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(wants("pibake-firstboot.service"))).toMatch(/\/etc\/systemd\/system\/pibake-firstboot\.service$/);
    expect(existsSync(wants("nodered.service"))).toBe(false);
    const st = statSync(userDir);
    expect({ uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 }).toEqual({ uid, gid, mode: 0o700 });
    for (const [name, mode] of [
      ["settings.js", 0o600],
      ["flows_cred.json", 0o600],
      ["flows.json", 0o644],
      ["package.json", 0o644],
    ] as const) {
      const f = statSync(path.join(userDir, name));
      expect({ name, uid: f.uid, gid: f.gid, mode: f.mode & 0o7777 }).toEqual({ name, uid, gid, mode });
    }
    expect(statSync(path.join(rootfs, "usr/local/lib/pibake/firstboot.sh")).mode & 0o777).toBe(0o755);
    // The OS's Node.js; npm is npm's own release, which the first boot installs (install-npm.sh), not Debian's.
    expect(existsSync(path.join(rootfs, "usr/bin/node"))).toBe(true);
    expect(existsSync(path.join(rootfs, "usr/bin/npm"))).toBe(false);
  });

  it("the first-boot script installs Node-RED and the dashboard from the registry, enables nodered.service and writes the marker", async () => {
    const v = secrets.nodeRed!.versions;
    const run = await inChroot("/usr/local/lib/pibake/firstboot.sh\n");
    timings.firstRun = run.ms;
    const log = run.lines.join("\n");
    expect(log).toContain(`installing Node-RED ${v.nodeRed.version} with npm`);
    expect(log).toContain("first boot done");
    const installed = JSON.parse(readFileSync(path.join(rootfs, "usr/local/lib/node_modules/node-red/package.json"), "utf8")) as { version: string };
    expect(installed.version).toBe(v.nodeRed.version);
    expect(readlinkSync(path.join(rootfs, "usr/local/bin/npm"))).toBe("../lib/node_modules/npm/bin/npm-cli.js");
    expect(readlinkSync(path.join(rootfs, "usr/local/bin/node-red-pi"))).toMatch(/node-red\/bin\/node-red-pi$/);
    const dashboard = path.join(userDir, "node_modules", v.dashboard!.package, "package.json");
    expect((JSON.parse(readFileSync(dashboard, "utf8")) as { version: string }).version).toBe(v.dashboard!.version);
    // Installed as the first user, who can update or remove it from the palette manager.
    expect(statSync(dashboard).uid).toBe(idOf("etc/passwd", user));
    expect(readFileSync(path.join(rootfs, "var/lib/pibake/firstboot.done"), "utf8")).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(readlinkSync(wants("nodered.service"))).toMatch(/\/etc\/systemd\/system\/nodered\.service$/);
    expect(readFileSync(path.join(rootfs, "etc/default/nodered"), "utf8")).toMatch(/^NODE_OPTIONS=--max-old-space-size=(256|512|1024)$/m);
    // The arm64 Node-RED that npm put there runs on the OS's Node.
    const help = await inChroot("node /usr/local/lib/node_modules/node-red/red.js --help\n");
    expect(help.lines.join("\n")).toMatch(/Usage: node-red/);
  }, 1_800_000);

  it("the arm64 Node-RED starts as the first user with the rendered files and asks for the login", async () => {
    const port = await freePort();
    await withCleanup(async (scope) => {
      await mountChrootFilesystems(new ImageRoot(rootfs), scope);
      let log = "";
      const start = Date.now();
      const child = execa(
        "chroot",
        [
          rootfs,
          "setpriv",
          `--reuid=${user}`,
          `--regid=${user}`,
          "--init-groups",
          "env",
          `HOME=/home/${user}`,
          "node",
          "/usr/local/lib/node_modules/node-red/red.js",
          "--userDir",
          `/home/${user}/.node-red`,
          "--port",
          String(port),
          "-D",
          "uiHost=127.0.0.1",
        ],
        {
          reject: false,
          all: true,
          forceKillAfterDelay: 5000,
        },
      );
      child.all?.on("data", (d: Buffer) => (log += d.toString()));
      scope.defer(async () => {
        child.kill("SIGINT");
        await child;
      }, "stop Node-RED");
      const deadline = Date.now() + 600_000;
      while (!log.includes("Started flows") && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));
      timings.nodeRedStart = Date.now() - start;
      expect(log, log).toContain("Started flows");
      expect(log).toContain("Node-RED Dashboard 2.0");
      expect(log).not.toMatch(/Waiting for missing types|Error loading credentials|Error loading flows/);
      const login = (password: string) =>
        fetch(`http://127.0.0.1:${port}/auth/token`, {
          method: "POST",
          body: new URLSearchParams({ client_id: "node-red-admin", grant_type: "password", scope: "*", username: "admin", password }),
          signal: AbortSignal.timeout(60_000),
        });
      expect((await login("wrong-password")).status).toBe(403);
      expect((await login("editor-password-1")).status).toBe(200);
    });
  }, 900_000);

  it("a second run does nothing", async () => {
    const marker = readFileSync(path.join(rootfs, "var/lib/pibake/firstboot.done"), "utf8");
    const run = await inChroot("/usr/local/lib/pibake/firstboot.sh\n");
    timings.secondRun = run.ms;
    expect(run.lines.join("\n")).toBe("nothing to do: /var/lib/pibake/firstboot.done exists (the first boot is done)");
    expect(readFileSync(path.join(rootfs, "var/lib/pibake/firstboot.done"), "utf8")).toBe(marker);
  }, 120_000);
});
