/**
 * The broker's persistence file with the rendered configuration and a real
 * mosquitto: saved on the rendered interval, and a file mosquitto cannot load
 * (what a power cut during a save can leave) moved aside by the rendered
 * ExecStartPre= script, run here exactly as the Pi runs it, so that the broker
 * starts instead of failing on every start. The drop-in passes
 * systemd-analyze verify and the script shellcheck.
 */
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  Broker,
  clients,
  inbox,
  layOutRenderedBroker,
  mustConnect,
  sleep,
  startLaidOutBroker,
  subscribe,
  type LaidOut,
  type RunningBroker,
} from "./helpers/mosquitto.js";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";

const SCRIPT = "usr/local/lib/pibake/mosquitto-db-check.sh";
const DROP_IN = "etc/systemd/system/mosquitto.service.d/50-pibake.conf";

describe("the persistence file", () => {
  const brokers: Broker[] = [];
  let fx: Fixture;

  const fixture = async () => (fx ??= await renderFixture());
  const start = async (laid: LaidOut) => {
    const running = await startLaidOutBroker(fx, laid);
    brokers.push(running.broker);
    return running;
  };
  /** The rendered check script, at its path under the laid-out root, run on that root's persistence directory. */
  const runCheck = async (laid: LaidOut) => {
    const script = path.join(laid.root, SCRIPT);
    mkdirSync(path.dirname(script), { recursive: true });
    const f = fx.rendered.overlay.find((o) => o.path === SCRIPT)!;
    writeFileSync(script, f.content);
    chmodSync(script, f.mode);
    return execa(script, [path.join(laid.root, "var/lib/mosquitto")], { reject: false, all: true, timeout: 90_000 });
  };
  /** A real persistence file holding one retained message, written by mosquitto on a clean stop. */
  const savedDb = async (): Promise<Buffer> => {
    const laid = await layOutRenderedBroker(await fixture());
    const running = await start(laid);
    const hub = await mustConnect({ protocol: "mqtt", host: "127.0.0.1", port: running.lanPort, username: "hub", password: fx.clear.mqtt.hub });
    await hub.publishAsync("home/state", "kept", { qos: 1, retain: true });
    await hub.endAsync();
    await running.broker.stop();
    return readFileSync(path.join(laid.root, "var/lib/mosquitto/mosquitto.db"));
  };
  const retained = async (running: RunningBroker): Promise<string[]> => {
    const client = await mustConnect({ protocol: "mqtt", host: "127.0.0.1", port: running.lanPort, username: "hub", password: fx.clear.mqtt.hub });
    const box = inbox(client);
    await subscribe(client, "home/state");
    await box.waitFor("home/state", "kept", 1500);
    return box.got.map((m) => m.payload);
  };

  afterEach(async () => {
    await Promise.all([...clients].map((c) => c.endAsync(true).catch(() => undefined)));
    clients.clear();
    await Promise.all(brokers.splice(0).map((b) => b.stop()));
  });

  afterAll(() => {
    fx?.cleanup();
    removeAllFixtures();
  });

  it("is saved every 300 seconds by default, as rendered; without persistence neither the setting nor the check", async () => {
    const conf = (await fixture()).overlayText("etc/mosquitto/conf.d/pibake.conf");
    expect(conf).toMatch(/^persistence true\n(#.*\n)*autosave_interval 300$/m);
    const off = baseConfig();
    off.mqtt.persistence = false;
    const fxOff = await renderFixture({ config: off });
    try {
      expect(fxOff.overlayText("etc/mosquitto/conf.d/pibake.conf")).toMatch(/^persistence false$/m);
      expect(fxOff.overlayText("etc/mosquitto/conf.d/pibake.conf")).not.toContain("autosave_interval");
      expect(fxOff.rendered.overlay.map((f) => f.path)).not.toEqual(expect.arrayContaining([SCRIPT]));
      expect(fxOff.rendered.overlay.map((f) => f.path)).not.toEqual(expect.arrayContaining([DROP_IN]));
    } finally {
      fxOff.cleanup();
    }
  });

  it("renders a configured interval, which mosquitto loads without complaint", async () => {
    const c = baseConfig();
    c.mqtt.autosaveInterval = 60;
    const fx60 = await renderFixture({ config: c });
    try {
      expect(fx60.overlayText("etc/mosquitto/conf.d/pibake.conf")).toMatch(/^autosave_interval 60$/m);
      // Mosquitto's own log says when it saves; the interval itself is too long for a test.
      const laid = await layOutRenderedBroker(fx60);
      const running = await startLaidOutBroker(fx60, laid);
      brokers.push(running.broker);
      expect(running.broker.log).not.toMatch(/Error|Warning: (?!Mosquitto should not be run as root)/);
    } finally {
      fx60.cleanup();
    }
  });

  it("keeps mosquitto 2.0 down when it cannot be loaded, without the check (the failure the check exists for)", async () => {
    const db = await savedDb();
    const laid = await layOutRenderedBroker(fx);
    writeFileSync(path.join(laid.root, "var/lib/mosquitto/mosquitto.db"), db.subarray(0, 40));
    const broker = new Broker(laid.mainConf);
    brokers.push(broker);
    await expect(broker.waitForLog(/mosquitto version \S+ running/, 10_000)).rejects.toThrow(/exited with code 1/);
    expect(broker.log).toContain("Error: Couldn't open database.");
  });

  for (const [kind, spoil] of [
    ["cut short", (db: Buffer) => db.subarray(0, 40)],
    ["overwritten with other bytes", (db: Buffer) => Buffer.concat([db.subarray(0, 15), Buffer.alloc(db.length - 15, 0xa5)])],
    ["not a mosquitto file at all", () => Buffer.from("this is not a mosquitto persistence file\n".repeat(8))],
  ] as const) {
    it(`is moved aside when ${kind}, and the broker then starts empty and logs users in`, async () => {
      const db = await savedDb();
      const laid = await layOutRenderedBroker(fx);
      const dir = path.join(laid.root, "var/lib/mosquitto");
      const bad = spoil(db);
      writeFileSync(path.join(dir, "mosquitto.db"), bad);

      const check = await runCheck(laid);
      expect(check.exitCode, check.all).toBe(0);
      const aside = readdirSync(dir).filter((f) => /^mosquitto\.db\.corrupt-\d{8}T\d{6}Z$/.test(f));
      expect(aside, readdirSync(dir).join(" ")).toHaveLength(1);
      expect(readFileSync(path.join(dir, aside[0]!))).toEqual(bad);
      expect(existsSync(path.join(dir, "mosquitto.db"))).toBe(false);
      // One line for the journal, naming the file it moved.
      expect(check.all).toMatch(
        new RegExp(
          `^pibake: mosquitto cannot load its persistence file .*moved it to ${path.join(dir, aside[0]!).replace(/[.]/g, "\\.")}; the broker starts without retained messages and stored sessions$`,
        ),
      );

      const running = await start(laid);
      expect(running.broker.running).toBe(true);
      expect(await retained(running)).toEqual([]);
    });
  }

  it("is left exactly as it was when mosquitto can load it, and its retained message survives", async () => {
    const db = await savedDb();
    const laid = await layOutRenderedBroker(fx);
    const file = path.join(laid.root, "var/lib/mosquitto/mosquitto.db");
    writeFileSync(file, db);
    const before = statSync(file);
    await sleep(1100);
    const check = await runCheck(laid);
    expect(check.exitCode, check.all).toBe(0);
    expect(check.all).toBe("");
    expect(readFileSync(file)).toEqual(db);
    expect(statSync(file).mtimeMs).toBe(before.mtimeMs);
    expect(readdirSync(path.dirname(file))).toEqual(["mosquitto.db"]);
    const running = await start(laid);
    expect(await retained(running)).toEqual(["kept"]);
  });

  it("does nothing without a file or with an empty one", async () => {
    const laid = await layOutRenderedBroker(await fixture());
    const dir = path.join(laid.root, "var/lib/mosquitto");
    expect((await runCheck(laid)).all).toBe("");
    writeFileSync(path.join(dir, "mosquitto.db"), "");
    const check = await runCheck(laid);
    expect(check.exitCode).toBe(0);
    expect(check.all).toBe("");
    expect(readdirSync(dir)).toEqual(["mosquitto.db"]);
  });

  it("has a drop-in that systemd-analyze verify accepts on Debian's mosquitto.service, and a shellcheck-clean script", async () => {
    await fixture();
    const root = tempDir("pibake-verify-");
    const put = (p: string, content: string | Buffer, mode = 0o644) => {
      mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
      writeFileSync(path.join(root, p), content, { mode });
    };
    for (const f of fx.rendered.overlay.filter((o) => o.path === DROP_IN || o.path === SCRIPT)) put(f.path, f.content, f.mode);
    // Debian's unit (CI installs the package) and the host's own units it refers to.
    mkdirSync(path.join(root, "usr/lib/systemd"), { recursive: true });
    cpSync("/usr/lib/systemd/system", path.join(root, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
    expect(existsSync(path.join(root, "usr/lib/systemd/system/mosquitto.service"))).toBe(true);
    // Its ExecStart= and ExecStartPre= programs, which verify looks for under the root.
    for (const prog of ["usr/sbin/mosquitto", "bin/mkdir", "bin/chown", "bin/kill"]) put(prog, "#!/bin/sh\n", 0o755);
    // By name, so that verify loads the unit as systemd would, drop-ins included.
    const verify = () => execa("systemd-analyze", [`--root=${root}`, "verify", "mosquitto.service"], { reject: false, all: true, timeout: 30_000 });
    const ok = await verify();
    expect(ok.all).toBe("");
    expect(ok.exitCode).toBe(0);
    // verify checks ExecStart= programs only: the drop-in's is the rendered script.
    expect(fx.overlayText(DROP_IN)).toContain(`\nExecStartPre=-/${SCRIPT} /var/lib/mosquitto\n`);
    // The control: verify does read the drop-in (an unknown setting there is reported).
    put(DROP_IN, `${fx.overlayText(DROP_IN)}NoSuchSetting=1\n`);
    const broken = await verify();
    expect(broken.all).toMatch(/50-pibake\.conf:\d+: Unknown key '?NoSuchSetting'? in section '?\[?Service/);

    const sc = await execa("shellcheck", ["--severity=style", path.join(root, SCRIPT)], { reject: false, all: true, timeout: 30_000 });
    expect(sc.all).toBe("");
    expect(sc.exitCode).toBe(0);
  });
});
