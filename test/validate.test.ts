/**
 * `pibake validate` against the real lists (src/config/lists.ts: tzdata,
 * glibc's SUPPORTED, xkb-data), the decoded SSH keys and the gateway's
 * place in its subnet: values that passed before and broke the build or the
 * Pi now exit 2, naming the field, the value and what is wanted.
 */
import { execa } from "execa";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config/load.js";
import { keyboardLayoutProblem, keymapProblem, localeProblem, nearest, timezoneProblem } from "../src/config/lists.js";
import { configJsonSchema } from "../src/config/schema.js";
import { pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";

type Mutate = (c: Record<string, any>) => void;

const tmp = tempDir("pibake-validate-");
afterAll(tmp.cleanup);

/** [what, how, the field, what the line must say] */
const refused: [string, Mutate, string, RegExp][] = [
  [
    "a time zone on Mars",
    (c) => (c.image.timezone = "Mars/Olympus"),
    "image.timezone",
    /^"Mars\/Olympus" is not a time zone of the tz database: give an Area\/City name such as "Europe\/Berlin"/,
  ],
  [
    "a misspelt time zone",
    (c) => (c.image.timezone = "Europe/Berln"),
    "image.timezone",
    /^"Europe\/Berln" is not a time zone of the tz database \(did you mean "Europe\/Berlin"\?\)$/,
  ],
  [
    "an old time zone name that trixie's tzdata dropped",
    (c) => (c.image.timezone = "US/Eastern"),
    "image.timezone",
    /^"US\/Eastern" is an old name .* use "America\/New_York"$/,
  ],
  [
    "an old time zone name, fine for bookworm, with trixie",
    (c) => ((c.image.release = "trixie"), (c.image.timezone = "Europe/Kiev")),
    "image.timezone",
    /^"Europe\/Kiev" is an old name that trixie's tzdata no longer has .*: use "Europe\/Kyiv"$/,
  ],
  [
    "a locale of trixie's glibc with bookworm",
    (c) => ((c.image.release = "bookworm"), (c.image.locale = "tok")),
    "image.locale",
    /^"tok" is a locale of trixie's glibc, not bookworm's$/,
  ],
  [
    "a keymap of bookworm's xkb-data with trixie",
    (c) => ((c.image.release = "trixie"), (c.image.keyboard = { keymap: "mao", layout: "Maori" })),
    "image.keyboard.keymap",
    /^"mao" is an XKB layout of bookworm's xkb-data, not trixie's/,
  ],
  [
    "a locale glibc does not have",
    (c) => (c.image.locale = "xx_YY.UTF-8"),
    "image.locale",
    /^"xx_YY\.UTF-8" is not a locale of glibc's supported list .*: give one such as "en_GB\.UTF-8"/,
  ],
  ["a locale with its codeset in lower case", (c) => (c.image.locale = "de_DE.utf8"), "image.locale", /\(did you mean "de_DE\.UTF-8"\?\)$/],
  [
    "a keymap XKB does not have",
    (c) => (c.image.keyboard.keymap = "zz"),
    "image.keyboard.keymap",
    /^"zz" is not an XKB layout code of xkb-data: give one such as "gb", "us" or "de"/,
  ],
  ["a layout's name as its keymap", (c) => (c.image.keyboard.keymap = "german"), "image.keyboard.keymap", /\(did you mean "de", the code of German\?\)$/],
  [
    "the layout name of another keymap",
    (c) => (c.image.keyboard.layout = "English (UK)"),
    "image.keyboard.layout",
    /^"English \(UK\)" is the name of XKB layout "gb", not of "de" \(image\.keyboard\.keymap\): use "German"/,
  ],
  [
    "a layout name XKB does not have",
    (c) => (c.image.keyboard.layout = "Germish"),
    "image.keyboard.layout",
    /^"Germish" is not the name of XKB layout "de" .*: use "German" or one of its variants, e\.g\. "German - German/,
  ],
  [
    "the broadcast address as the gateway",
    (c) => (c.network.gateway = "192.168.1.255"),
    "network.gateway",
    /^192\.168\.1\.255 is the broadcast address of 192\.168\.1\.0\/24, not a router's/,
  ],
  [
    "the network address as the gateway",
    (c) => (c.network.gateway = "192.168.1.0"),
    "network.gateway",
    /^192\.168\.1\.0 is the network address of 192\.168\.1\.0\/24, not a router's/,
  ],
  [
    "the broadcast address of a /20 as the gateway",
    (c) => ((c.network.address = "10.1.2.3/20"), (c.network.gateway = "10.1.15.255")),
    "network.gateway",
    /is the broadcast address of 10\.1\.0\.0\/20/,
  ],
  [
    "an SSH key with one character removed, and no password SSH",
    (c) => (c.user.sshKeys = [c.user.sshKeys[0].replace(/^(\S+ \S{30})\S/, "$1")]),
    "user.sshKeys[0]",
    /^"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI.* is not an SSH public key: its base64 part is damaged/,
  ],
];

function configFile(name: string, mutate: Mutate = () => undefined): string {
  const c = validConfig();
  mutate(c);
  return writeJson(path.join(tmp.dir, `${name.replace(/\W+/g, "-")}.json`), c);
}

describe("pibake validate refuses what would break the build or the Pi", () => {
  it.each(refused)("%s: exit 2, naming the field, the value and what is wanted", async (name, mutate, field, says) => {
    const r = await pibake(["validate", configFile(name, mutate)], { env: secretEnv });
    expect(r.exitCode, r.stderr).toBe(2);
    const line = r.stderr.split("\n").find((l) => l.trim().startsWith(`${field}: `));
    expect(line, `stderr names ${field}:\n${r.stderr}`).toBeDefined();
    expect(line!.trim().slice(field.length + 2)).toMatch(says);
  });

  it("reports every one of them at once", async () => {
    const cfg = configFile("all-at-once", (c) => {
      c.image.timezone = "Europe/Berln";
      c.image.locale = "xx_YY.UTF-8";
      c.image.keyboard.keymap = "zz";
      c.user.sshKeys = [c.user.sshKeys[0].slice(0, 40) + c.user.sshKeys[0].slice(41)];
      c.network.address = "192.168.1.300/24";
    });
    const r = await pibake(["validate", cfg], { env: secretEnv });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/5 problems/);
    for (const field of ["image.timezone", "image.locale", "image.keyboard.keymap", "user.sshKeys[0]", "network.address"])
      expect(r.stderr).toContain(`  ${field}: `);
  });
});

describe("the lists", () => {
  it("has each list for every release the config may name", () => {
    const releases = (configJsonSchema() as { properties: { image: { properties: { release: { enum: string[] } } } } }).properties.image.properties.release
      .enum;
    expect(releases.length).toBeGreaterThan(0);
    for (const release of releases) {
      for (const file of ["timezones.txt", "timezones-legacy.txt", "locales-SUPPORTED", "xkb-base.lst"])
        expect(existsSync(path.join(repoRoot, "data", release, file)), `data/${release}/${file}`).toBe(true);
      expect(timezoneProblem("Etc/UTC", release as "trixie")).toBeUndefined();
    }
  });

  it.each(["Etc/UTC", "UTC", "Europe/Berlin", "Europe/Kyiv", "America/Argentina/Buenos_Aires", "Etc/GMT-2"])(
    "takes the time zone %s, which the Pi's tzdata has",
    (tz) => {
      expect(timezoneProblem(tz)).toBeUndefined();
      expect(timezoneProblem(tz, "trixie")).toBeUndefined();
      expect(timezoneProblem(tz, "bookworm")).toBeUndefined();
    },
  );

  it("takes the old time zone names for bookworm, whose tzdata still has them", () => {
    expect(timezoneProblem("US/Eastern", "bookworm")).toBeUndefined();
    expect(timezoneProblem("US/Eastern", "trixie")).toMatch(/use "America\/New_York"/);
  });

  it.each(["en_GB.UTF-8", "de_DE.UTF-8", "ca_ES@valencia", "sr_RS@latin", "de_DE", "eo"])("takes the locale %s, which glibc supports", (locale) => {
    expect(localeProblem(locale)).toBeUndefined();
    expect(localeProblem(locale, "trixie")).toBeUndefined();
  });

  it.each([
    ["gb", "English (UK)"],
    ["us", "English (US)"],
    ["de", "German"],
    ["de", "German - German (no dead keys)"],
    ["fr", "French"],
  ])("takes the keymap %s with the layout %s", (keymap, layout) => {
    for (const release of [undefined, "trixie", "bookworm"] as const) {
      expect(keymapProblem(keymap, release)).toBeUndefined();
      expect(keyboardLayoutProblem(keymap, layout, release)).toBeUndefined();
    }
  });

  it("suggests a name only when it is near enough to be what was meant", () => {
    expect(nearest("Europe/Berln", ["Europe/Berlin", "Europe/Bern"])).toBe("Europe/Berlin");
    expect(nearest("berlin", ["Europe/Berlin"])).toBe("Europe/Berlin");
    expect(nearest("zz", ["de", "gb"])).toBeUndefined();
    expect(nearest("Mars/Olympus", ["Europe/Berlin", "America/Los_Angeles"])).toBeUndefined();
  });

  it("takes the shipped example's and the README's defaults", () => {
    const c = validConfig();
    delete c.image.timezone;
    delete c.image.locale;
    delete c.image.keyboard;
    const { model } = loadConfig(writeJson(path.join(tmp.dir, "defaults.json"), c), { ...secretEnv });
    expect(model.image).toMatchObject({ timezone: "Etc/UTC", locale: "en_GB.UTF-8", keyboard: { keymap: "gb", layout: "English (UK)" } });
    const example = JSON.parse(readFileSync("examples/broker.json", "utf8")) as {
      image: { timezone: string; locale: string; keyboard: { keymap: string; layout: string } };
    };
    expect(timezoneProblem(example.image.timezone)).toBeUndefined();
    expect(localeProblem(example.image.locale)).toBeUndefined();
    expect(keyboardLayoutProblem(example.image.keyboard.keymap, example.image.keyboard.layout)).toBeUndefined();
  });
});

describe("warnings", () => {
  it("the example key of examples/broker.json left in a config: valid, with a warning naming the key", async () => {
    const example = (JSON.parse(readFileSync("examples/broker.json", "utf8")) as { user: { sshKeys: string[] } }).user.sshKeys[0]!;
    const cfg = configFile("example-key", (c) => (c.user.sshKeys = [c.user.sshKeys[0], example.replace("you@laptop", "copied@laptop")]));
    const r = await pibake(["validate", cfg], { env: secretEnv });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^warning: user\.sshKeys\[1\] is the example key of examples\/broker\.json, not yours/m);
    expect(r.stderr).not.toMatch(/user\.sshKeys\[0\] is the example key/);
  });

  it("no such warning with a key of one's own", async () => {
    const keyFile = path.join(tmp.dir, "own");
    await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", keyFile]);
    const cfg = configFile("own-key", (c) => (c.user.sshKeys = [readFileSync(`${keyFile}.pub`, "utf8").trim(), c.user.sshKeys[0]]));
    const r = await pibake(["validate", cfg], { env: secretEnv });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/example key/);
  });

  it.each([
    [0o644, /which its group and every user can read \(mode 644\): chmod 600 /],
    [0o640, /which its group can read \(mode 640\)/],
    [0o604, /which every user can read \(mode 604\)/],
    [0o600, undefined],
  ])("a secret file of mode %o: a warning when others can read it, never its value", async (mode, says) => {
    const secret = path.join(tmp.dir, `phone-${mode.toString(8)}.txt`);
    writeFileSync(secret, "Phone-File-Secret-7q\n");
    chmodSync(secret, mode);
    const cfg = configFile(`file-mode-${mode.toString(8)}`, (c) => (c.mqtt.users[1].password = { file: path.basename(secret) }));
    for (const command of [
      ["validate", cfg],
      ["render", cfg, "--out", path.join(tmp.dir, `out-${mode.toString(8)}`), "--state", path.join(tmp.dir, `state-${mode.toString(8)}`)],
    ]) {
      const r = await pibake(command, { env: secretEnv });
      expect(r.exitCode, r.stderr).toBe(0);
      const warning = r.stderr.split("\n").find((l) => l.startsWith("warning: mqtt.users[1].password comes from file"));
      if (says) expect(warning, r.stderr).toMatch(says);
      else expect(warning, r.stderr).toBeUndefined();
      expect(r.stdout + r.stderr).not.toContain("Phone-File-Secret-7q");
    }
  });
});
