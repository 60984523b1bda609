import { describe, expect, it, afterAll } from "vitest";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { configJsonSchema } from "../src/config/schema.js";
import { OVERLAY, templateFor } from "../src/render/overlay.js";
import { baseConfig, removeAllFixtures, renderFixture } from "./helpers/render-fixture.js";

function listFiles(dir: string, rel = ""): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true }).flatMap((e) => {
    const p = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory() ? listFiles(dir, p) : [p];
  });
}

describe("render", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);
  const cfg = writeJson(path.join(tmp.dir, "broker.json"), validConfig());
  const state = path.join(tmp.dir, "state");

  it("writes the stage, overlay, pi-gen config and CA certificate, and says what it did without secrets", async () => {
    const out = path.join(tmp.dir, "out1");
    const r = await pibake(["render", cfg, "--out", out, "--state", state], { env: secretEnv });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/domain:\s+home\.freemyip\.com/);
    expect(r.stdout).toMatch(/certificate: issued \(new\), valid until \d{4}-\d\d-\d\d \(825 days\)/);
    expect(listFiles(out).sort()).toEqual(
      [
        "ca.crt",
        "overlay.tar",
        "pi-gen.config",
        "stage/EXPORT_IMAGE",
        "stage/prerun.sh",
        "stage/00-broker/00-packages-nr",
        "stage/00-broker/01-run.sh",
        "stage/00-broker/02-run-chroot.sh",
        "stage/00-broker/files/overlay.tar",
        "manifest.json",
        "stage/01-node-red/00-packages-nr",
        "stage/01-node-red/01-run-chroot.sh",
        "stage/02-first-boot/00-run-chroot.sh",
        "stage/02-first-boot/01-run.sh",
        "stage/02-first-boot/files/user-data",
      ].sort(),
    );
    // Secrets-bearing files are private; scripts are executable, as pi-gen requires.
    expect(statSync(path.join(out, "overlay.tar")).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(out, "stage/00-broker/files/overlay.tar")).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(out, "stage/00-broker/01-run.sh")).mode & 0o777).toBe(0o755);
    expect(statSync(out).mode & 0o777).toBe(0o700);
    for (const s of Object.values(secretEnv)) expect(r.stdout + r.stderr).not.toContain(s);
  });

  it("keeps the state private: files 0600, directory 0700", () => {
    expect(statSync(state).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(state)) expect(statSync(path.join(state, f)).mode & 0o777, f).toBe(0o600);
  });

  it("renders byte-identical files from the same config and state", async () => {
    const out2 = path.join(tmp.dir, "out2");
    const r = await pibake(["render", cfg, "--out", out2, "--state", state], { env: secretEnv });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/certificate: reused/);
    for (const f of listFiles(out2)) {
      expect(readFileSync(path.join(out2, f)).equals(readFileSync(path.join(tmp.dir, "out1", f))), f).toBe(true);
    }
  });

  it("never puts the CA key or a clear-text password into what it renders", async () => {
    const out = path.join(tmp.dir, "out1");
    const caKey = readFileSync(path.join(state, "ca.key"), "utf8");
    const keyBody = caKey.split("\n").slice(1, 4).join("\n");
    for (const f of listFiles(out)) {
      const text = readFileSync(path.join(out, f)).toString("latin1");
      expect(text, f).not.toContain(keyBody);
      for (const s of [secretEnv.T_USER_PW, secretEnv.T_MQTT_SENSORS_PW, secretEnv.T_MQTT_PHONE_PW]) expect(text, f).not.toContain(s);
    }
  });

  it("refuses a non-empty output directory unless --force, and keeps what was there", async () => {
    const out = path.join(tmp.dir, "busy");
    mkdirSync(out);
    writeFileSync(path.join(out, "keep.txt"), "mine");
    const r = await pibake(["render", cfg, "--out", out, "--state", state], { env: secretEnv });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/busy is not empty: choose another --out, or pass --force/);
    expect(readFileSync(path.join(out, "keep.txt"), "utf8")).toBe("mine");
    const forced = await pibake(["render", cfg, "--out", out, "--state", state, "--force"], { env: secretEnv });
    expect(forced.exitCode).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["ca.crt", "manifest.json", "overlay.tar", "pi-gen.config", "stage"]);
    expect(readdirSync(tmp.dir).filter((n) => n.includes(".tmp-") || n.includes(".old-"))).toEqual([]);
  });

  it("exports and shows the CA", async () => {
    const exported = path.join(tmp.dir, "exported-ca.crt");
    const r = await pibake(["ca", "export", "--state", state, "--out", exported]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(exported, "utf8")).toBe(readFileSync(path.join(state, "ca.crt"), "utf8"));
    const show = await pibake(["ca", "show", cfg], { env: { ...secretEnv } });
    expect(show.exitCode).toBe(1); // the config's default state dir is empty: says so
    expect(show.stderr).toMatch(/no CA in .*\.pibake\/test-broker: run pibake render or pibake build first/);
    const shown = await pibake(["ca", "show", "--state", state]);
    expect(shown.stdout).toMatch(/CA:\n  subject:     CN=pibake CA test-broker, O=pibake/);
    expect(shown.stdout).toMatch(/server certificate:[\s\S]*names:\s+home\.freemyip\.com, broker\.lan, broker\.local, 192\.168\.1\.10/);
  });
});

describe("the tree shows what lands on the Pi", () => {
  it("has a template under overlays/ for every overlay entry, and an entry for every template", () => {
    const templates = listFiles(path.join(repoRoot, "overlays"))
      .filter((f) => f.endsWith(".hbs"))
      .map((f) => path.join(repoRoot, "overlays", f));
    expect(new Set(OVERLAY.map(templateFor))).toEqual(new Set(templates));
  });

  it("ships the JSON Schema that `pibake schema` prints", async () => {
    const shipped = JSON.parse(readFileSync(path.join(repoRoot, "schema/pibake.schema.json"), "utf8"));
    expect(shipped).toEqual(configJsonSchema());
    const r = await pibake(["schema"]);
    expect(JSON.parse(r.stdout)).toEqual(shipped);
    const example = JSON.parse(readFileSync(path.join(repoRoot, "examples/broker.json"), "utf8"));
    expect(path.resolve(repoRoot, "examples", example.$schema)).toBe(path.join(repoRoot, "schema/pibake.schema.json"));
  });
});

describe('tls.mode "acme" in the render', () => {
  afterAll(() => removeAllFixtures());

  it("adds the renewal (script, hook, service, timer enabled), lego and curl; the listeners serve public.*, made before mosquitto starts", async () => {
    const config = baseConfig();
    config.tls.mode = "acme";
    config.tls.acme = { email: "me@example.org" };
    config.mqtt.persistence = false;
    config.mqtt.websockets = { tlsPort: 8884 };
    const fx = await renderFixture({ config });
    const paths = fx.rendered.overlay.map((f) => f.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        "usr/local/lib/pibake/acme-certificate.sh",
        "usr/local/lib/pibake/freemyip-txt.sh",
        "etc/systemd/system/pibake-acme.service",
        "etc/systemd/system/pibake-acme.timer",
      ]),
    );
    // Not in the overlay: a push or a new render never replaces the public certificate.
    expect(paths.filter((p) => p.includes("public."))).toEqual([]);
    const conf = fx.overlayText("etc/mosquitto/conf.d/pibake.conf");
    expect(conf.match(/^certfile .*$/gm)).toEqual(["certfile /etc/mosquitto/certs/public.crt", "certfile /etc/mosquitto/certs/public.crt"]);
    expect(conf.match(/^keyfile .*$/gm)).toEqual(["keyfile /etc/mosquitto/certs/public.key", "keyfile /etc/mosquitto/certs/public.key"]);
    // Without persistence the drop-in is there for the certificate alone.
    const dropIn = fx.overlayText("etc/systemd/system/mosquitto.service.d/50-pibake.conf");
    expect(dropIn).toContain("ExecStartPre=-/usr/local/lib/pibake/acme-certificate.sh --prepare");
    expect(dropIn).not.toContain("mosquitto-db-check");
    expect(fx.overlayText("usr/local/lib/pibake/acme-certificate.sh")).toContain("readonly SERVER='https://acme-v02.api.letsencrypt.org/directory'");
    expect(fx.overlayText("usr/local/lib/pibake/freemyip-txt.sh")).toContain("readonly CHALLENGE_NAME='_acme-challenge.pibake-test.freemyip.com'");
    // The token stays in ddclient's file: no rendered ACME file carries it.
    for (const p of paths.filter((x) => /acme|freemyip/.test(x))) expect(fx.overlayText(p)).not.toContain(fx.clear.ddns!);
    expect(fx.stageText("00-broker/00-packages-nr").split("\n")).toEqual(expect.arrayContaining(["lego", "curl"]));
    expect(fx.stageText("00-broker/02-run-chroot.sh")).toContain("systemctl enable pibake-acme.timer");
    expect(fx.overlayText("usr/local/lib/pibake/status.sh")).toContain("public certificate (ACME, https://acme-v02.api.letsencrypt.org/directory)");
  });

  it("own-ca (the default) has none of it and serves server.*", async () => {
    const fx = await renderFixture();
    expect(fx.rendered.overlay.map((f) => f.path).filter((p) => /acme|freemyip-txt/.test(p))).toEqual([]);
    expect(fx.overlayText("etc/mosquitto/conf.d/pibake.conf")).toContain("certfile /etc/mosquitto/certs/server.crt");
    expect(fx.stageText("00-broker/00-packages-nr").split("\n")).not.toContain("lego");
    expect(fx.overlayText("etc/systemd/system/mosquitto.service.d/50-pibake.conf")).not.toContain("acme");
  });
});
