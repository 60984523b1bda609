import { execa } from "execa";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { withCleanup } from "../src/cleanup.js";
import { defaultRoute, proposeNetwork } from "../src/init/plan.js";
import { writeAll } from "../src/init/write.js";
import { bin, pibake, tempDir } from "./helpers/cli.js";

/** /proc/net/route with a default route through 192.168.178.1 on wlp2s0 (addresses in little-endian hex). */
const ROUTE = [
  "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
  "wlp2s0\t00000000\t01B2A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0",
  "wlp2s0\t00B2A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0",
].join("\n");

const iface = (address: string, cidr: string) => [{ address, cidr, family: "IPv4" as const, internal: false, netmask: "", mac: "" }];

describe("the network init proposes", () => {
  it("reads the default route's interface and gateway", () => {
    expect(defaultRoute(ROUTE)).toEqual({ iface: "wlp2s0", gateway: "192.168.178.1" });
    expect(
      defaultRoute(
        ROUTE.split("\n")
          .filter((l) => !l.includes("\t00000000\t01"))
          .join("\n"),
      ),
    ).toBeUndefined();
  });

  it.each([
    [
      "host .10 of this machine's subnet, its gateway",
      iface("192.168.178.23", "192.168.178.23/24"),
      { address: "192.168.178.10/24", gateway: "192.168.178.1" },
    ],
    ["the next host when .10 is this machine", iface("192.168.178.10", "192.168.178.10/24"), { address: "192.168.178.11/24", gateway: "192.168.178.1" }],
    ["the subnet's own prefix", iface("192.168.178.200", "192.168.178.200/23"), { address: "192.168.178.10/23", gateway: "192.168.178.1" }],
    ["192.168.1.10/24 when the route's interface has no IPv4 address", [], { address: "192.168.1.10/24", gateway: "192.168.1.1" }],
  ])("%s", (_, addresses, expected) => {
    expect(proposeNetwork({ wlp2s0: addresses as never }, ROUTE)).toMatchObject(expected);
  });

  it("proposes 192.168.1.10/24 without a default route", () => {
    expect(proposeNetwork({}, "")).toEqual({ address: "192.168.1.10/24", gateway: "192.168.1.1" });
  });
});

describe("init's files", () => {
  const t = tempDir("pibake-init-");
  afterAll(() => t.cleanup());

  it("are all written or none: a file that appeared meanwhile is kept, and what was written is taken back", async () => {
    const dir = t.dir;
    const secrets = path.join(dir, "secrets");
    // The config's name taken after the check, before the link: the one file that must not be replaced.
    writeFileSync(path.join(dir, "broker.json"), "theirs");
    const files = [
      { file: path.join(secrets, "a.txt"), data: "one\n", mode: 0o600 },
      { file: path.join(dir, "broker.json"), data: "{}\n", mode: 0o644 },
    ];
    await expect(withCleanup(async (scope) => writeAll(files, secrets, scope))).rejects.toThrow(`${path.join(dir, "broker.json")} already exists`);
    expect(readdirSync(dir)).toEqual(["broker.json"]);
    expect(readFileSync(path.join(dir, "broker.json"), "utf8")).toBe("theirs");
  });
});

/** A pseudo-terminal of its own: a tmux server on a socket of this test's (in a directory removed after it), killed afterwards. */
const socketDir = tempDir("pibake-init-tmux-");
const tmux = (...args: string[]) => execa("tmux", ["-S", path.join(socketDir.dir, "socket"), ...args], { reject: false });
const sessions: string[] = [];

async function startSession(name: string, home: string, args: string[]): Promise<void> {
  // The server takes its environment from the first client; the command is given its own outright.
  const command = ["env", `HOME=${home}`, "LANG=en_GB.UTF-8", "TZ=Europe/Berlin", "CI=", process.execPath, bin, "init", ...args].map((a) => `'${a}'`).join(" ");
  const r = await tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "60", `${command}; echo "EXIT=$?"; sleep 600`);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  sessions.push(name);
}

async function screen(name: string): Promise<string> {
  return String((await tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", name)).stdout);
}

/** Wait, bounded, until the screen shows `what`; the screen so far in the failure otherwise. */
async function waitFor(name: string, what: RegExp | string, timeoutMs = 20_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  let text = "";
  while (Date.now() < until) {
    text = await screen(name);
    if (typeof what === "string" ? text.includes(what) : what.test(text)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${String(what)}; the screen:\n${text}`);
}

/** Wait for the question, type the answer (literally), press Enter. */
async function answer(name: string, question: RegExp | string, typed: string): Promise<void> {
  await waitFor(name, question);
  if (typed) await tmux("send-keys", "-t", name, "-l", typed);
  await tmux("send-keys", "-t", name, "Enter");
}

/** A question is answered once its line shows the tick: the next one waited for is then a new question. */
const asked = (q: string) => new RegExp(`\\? ${q.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`);

afterAll(async () => {
  for (const s of sessions) await tmux("kill-session", "-t", s);
  await tmux("kill-server");
  socketDir.cleanup();
});

describe("pibake init on a terminal", () => {
  const t = tempDir("pibake-init-");
  afterAll(() => t.cleanup());

  it("asks, writes a config that validates and secrets only its owner reads, and shows each generated password once", async () => {
    const home = path.join(t.dir, "home");
    mkdirSync(path.join(home, ".ssh"), { recursive: true });
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", path.join(home, ".ssh", "id_ed25519")]);
    const dir = path.join(t.dir, "conf");
    mkdirSync(dir);
    const s = "interactive";
    await startSession(s, home, [path.join(dir, "broker.json")]);

    // A wrong answer is said at once and asked again: "home" has no dot.
    await answer(s, asked("Public name of the broker"), "home");
    await waitFor(s, "not a fully qualified DNS name");
    await tmux("send-keys", "-t", s, "-l", ".freemyip.com");
    await tmux("send-keys", "-t", s, "Enter");
    await answer(s, asked("freemyip token"), "tok3n-from-freemyip");
    await answer(s, asked("The Pi's static address"), "10.20.30.40/24");
    await answer(s, asked("The router's address"), "10.20.30.1");
    await answer(s, asked("Name of the Pi's user"), "alice");
    await answer(s, asked("Password of alice"), "");
    await answer(s, asked("MQTT user 1: name"), "sensors");
    await answer(s, asked("Password of MQTT user sensors"), "typed-sensor-pw");
    await answer(s, asked("The same again"), "typed-sensor-pw");
    await answer(s, asked("Another MQTT user?"), "y");
    await answer(s, asked("MQTT user 2: name"), "phone");
    await answer(s, asked("Password of MQTT user phone"), "");
    await answer(s, asked("Another MQTT user?"), "n");
    await answer(s, asked("Wi-Fi on the Pi?"), "y");
    await answer(s, asked("Wi-Fi network name"), "HomeNet");
    await answer(s, asked("Wi-Fi passphrase"), "typed-wifi-pass");
    await answer(s, asked("Wi-Fi country"), "de");
    await answer(s, asked("Which connection gets the static address?"), "");
    // The key made above is offered, first.
    const keys = await waitFor(s, asked("SSH key to log in with"));
    expect(keys).toMatch(/❯ id_ed25519\.pub\s+me@laptop/);
    await answer(s, asked("SSH key to log in with"), "");
    await answer(s, asked("Node-RED on the Pi?"), "n");
    await answer(s, asked("Time zone"), "");
    await answer(s, asked("Locale"), "");
    await answer(s, asked("Keyboard layout"), "de");
    const end = await waitFor(s, /EXIT=\d+/);
    expect(end).toContain("EXIT=0");

    // Typed secrets never reach the screen; generated ones do, once each, and equal their files.
    for (const typed of ["tok3n-from-freemyip", "typed-sensor-pw", "typed-wifi-pass"]) expect(end).not.toContain(typed);
    const printed = [...end.matchAll(/^ {2}(user alice|MQTT user phone)\s+(\S+)\s+(secrets\/\S+)$/gm)].map((m) => ({
      label: m[1],
      password: m[2]!,
      file: m[3]!,
    }));
    expect(printed.map((p) => p.label).sort()).toEqual(["MQTT user phone", "user alice"]);
    for (const p of printed) {
      expect(p.password).toMatch(/^[A-Za-z0-9]{20,}$/);
      expect(readFileSync(path.join(dir, p.file), "utf8")).toBe(`${p.password}\n`);
      expect(end.split(p.password).length - 1).toBe(1);
    }
    expect(end).toMatch(/broker\.json is valid/);
    expect(end).toContain(`sudo -E pibake build ${path.join(dir, "broker.json")}`);

    const config = JSON.parse(readFileSync(path.join(dir, "broker.json"), "utf8"));
    expect(config.$schema).toBe(path.relative(dir, path.join(path.dirname(bin), "..", "schema", "pibake.schema.json")));
    expect(config.tls.domain).toBe("home.freemyip.com");
    expect(config.network).toMatchObject({
      interface: "wlan0",
      address: "10.20.30.40/24",
      gateway: "10.20.30.1",
      wifi: { ssid: "HomeNet", country: "DE", passphrase: { file: "secrets/wifi-passphrase.txt" } },
    });
    expect(config.user).toEqual({
      name: "alice",
      password: { file: "secrets/user-password.txt" },
      sshKeys: [readFileSync(path.join(home, ".ssh", "id_ed25519.pub"), "utf8").trim()],
      passwordSsh: false,
    });
    expect(config.mqtt.users.map((u: { name: string; password: unknown }) => [u.name, u.password])).toEqual([
      ["sensors", { file: "secrets/mqtt-sensors.txt" }],
      ["phone", { file: "secrets/mqtt-phone.txt" }],
    ]);
    expect(config.ddns).toMatchObject({ provider: "freemyip", token: { file: "secrets/ddns-token.txt" } });
    expect(config.nodeRed).toEqual({ enabled: false });
    expect(config.image).toMatchObject({ timezone: "Europe/Berlin", locale: "en_GB.UTF-8", keyboard: { keymap: "de", layout: "German" } });

    const secrets = path.join(dir, "secrets");
    expect(statSync(secrets).mode & 0o777).toBe(0o700);
    expect(readdirSync(secrets).sort()).toEqual(["ddns-token.txt", "mqtt-phone.txt", "mqtt-sensors.txt", "user-password.txt", "wifi-passphrase.txt"]);
    for (const f of readdirSync(secrets)) expect(statSync(path.join(secrets, f)).mode & 0o777, f).toBe(0o600);
    expect(readFileSync(path.join(secrets, "mqtt-sensors.txt"), "utf8")).toBe("typed-sensor-pw\n");
    expect(readFileSync(path.join(secrets, "ddns-token.txt"), "utf8")).toBe("tok3n-from-freemyip\n");
    expect(readFileSync(path.join(secrets, "wifi-passphrase.txt"), "utf8")).toBe("typed-wifi-pass\n");
    expect(readdirSync(dir).sort()).toEqual(["broker.json", "secrets"]);

    const v = await pibake(["validate", path.join(dir, "broker.json")]);
    expect(v.exitCode, String(v.stderr)).toBe(0);
    expect(String(v.stderr)).not.toMatch(/warning/);
  }, 120_000);

  it("Ctrl-C on a question leaves nothing behind", async () => {
    const home = path.join(t.dir, "home-empty");
    mkdirSync(home);
    const dir = path.join(t.dir, "cancelled");
    mkdirSync(dir);
    const s = "cancel";
    await startSession(s, home, [path.join(dir, "broker.json")]);
    await answer(s, asked("Public name of the broker"), "home.freemyip.com");
    await answer(s, asked("freemyip token"), "tok3n-from-freemyip");
    await waitFor(s, asked("The Pi's static address"));
    await tmux("send-keys", "-t", s, "C-c");
    const end = await waitFor(s, /EXIT=\d+/);
    expect(end).toContain("cancelled: nothing was written");
    expect(end).toContain("EXIT=130");
    expect(readdirSync(dir)).toEqual([]);
  }, 60_000);
});

describe("pibake init without a terminal", () => {
  const t = tempDir("pibake-init-");
  afterAll(() => t.cleanup());

  function setUp(name: string): { dir: string; token: string; key: string } {
    const dir = path.join(t.dir, name);
    mkdirSync(dir);
    const token = path.join(dir, "token.txt");
    writeFileSync(token, "tok3n-from-freemyip\n", { mode: 0o600 });
    const key = path.join(dir, "id.pub");
    writeFileSync(key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwHNS3SEm8O4zjnZdCbr9e3rEqVAVAkCrWXOnK/5RXB me@laptop\n");
    return { dir, token, key };
  }

  it("takes flags, generates the passwords, and writes a config that validates", async () => {
    const { dir, token, key } = setUp("flags");
    const r = await pibake(
      [
        "init",
        "broker.json",
        "--domain",
        "home.freemyip.com",
        "--ddns-token-file",
        token,
        "--address",
        "192.168.1.10/24",
        "--gateway",
        "192.168.1.1",
        "--user",
        "bob",
        "--mqtt-user",
        "phone",
        "--ssh-key",
        key,
      ],
      { cwd: dir },
    );
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const config = JSON.parse(readFileSync(path.join(dir, "broker.json"), "utf8"));
    expect(config.ddns.token).toEqual({ file: "token.txt" });
    expect(config.user).toMatchObject({ name: "bob", passwordSsh: false, sshKeys: [readFileSync(key, "utf8").trim()] });
    expect(config.mqtt.users).toEqual([{ name: "phone", password: { file: "secrets/mqtt-phone.txt" } }]);
    expect(config.nodeRed).toEqual({});
    const password = /user bob\s+(\S+)\s+secrets\/user-password\.txt/.exec(String(r.stdout))?.[1];
    expect(readFileSync(path.join(dir, "secrets", "user-password.txt"), "utf8")).toBe(`${password}\n`);
    expect(String(r.stdout)).toContain("sudo -E pibake build broker.json");
    const v = await pibake(["validate", "broker.json"], { cwd: dir });
    expect(v.exitCode, String(v.stderr)).toBe(0);
  });

  it("refuses with exit 2 naming the flags it lacks, and writes nothing", async () => {
    const { dir, token } = setUp("missing");
    const r = await pibake(["init", "--ddns-token-file", token, "--gateway", "192.168.1.1"], { cwd: dir });
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toContain("needs --domain and --address");
    expect(readdirSync(dir).sort()).toEqual(["id.pub", "token.txt"]);
  });

  it("refuses a flag's wrong value, naming the flag", async () => {
    const { dir, token } = setUp("wrong");
    const r = await pibake(["init", "--domain", "home.freemyip.com", "--ddns-token-file", token, "--address", "192.168.1.10/24", "--gateway", "10.0.0.1"], {
      cwd: dir,
    });
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toContain("--gateway: 10.0.0.1 is outside 192.168.1.0/24");
    expect(existsSync(path.join(dir, "broker.json"))).toBe(false);
  });

  it("never replaces an existing config, nor a secret file, and asks nothing then", async () => {
    const { dir, token } = setUp("existing");
    writeFileSync(path.join(dir, "broker.json"), "{ mine }");
    const flags = ["--domain", "home.freemyip.com", "--ddns-token-file", token, "--address", "192.168.1.10/24", "--gateway", "192.168.1.1"];
    const r = await pibake(["init", ...flags], { cwd: dir });
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toContain(`${path.join(dir, "broker.json")} already exists`);
    expect(readFileSync(path.join(dir, "broker.json"), "utf8")).toBe("{ mine }");

    mkdirSync(path.join(dir, "secrets"));
    writeFileSync(path.join(dir, "secrets", "user-password.txt"), "old");
    const again = await pibake(["init", "other.json", ...flags], { cwd: dir });
    expect(again.exitCode).toBe(2);
    expect(String(again.stderr)).toContain(`${path.join(dir, "secrets", "user-password.txt")} already exists`);
    expect(readFileSync(path.join(dir, "secrets", "user-password.txt"), "utf8")).toBe("old");
    expect(readdirSync(dir).sort()).toEqual(["broker.json", "id.pub", "secrets", "token.txt"]);

    // An MQTT user's file, known only once the users are: refused before anything is written.
    const elsewhere = path.join(t.dir, "existing-mqtt");
    mkdirSync(path.join(elsewhere, "secrets"), { recursive: true });
    writeFileSync(path.join(elsewhere, "secrets", "mqtt-home.txt"), "old");
    const mqtt = await pibake(["init", ...flags], { cwd: elsewhere });
    expect(mqtt.exitCode).toBe(2);
    expect(String(mqtt.stderr)).toContain(`${path.join(elsewhere, "secrets", "mqtt-home.txt")} already exists`);
    expect(readdirSync(elsewhere)).toEqual(["secrets"]);
    expect(readdirSync(path.join(elsewhere, "secrets"))).toEqual(["mqtt-home.txt"]);
  });
});
