import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { baseConfig, removeAllFixtures, renderFixture, type Fixture } from "./helpers/render-fixture.js";
import { fullPathReasons, type FastBaseFacts } from "../src/engines/base-image/fast/decide.js";
import { shadowWithHash } from "../src/engines/base-image/fast/plan.js";
import { parseIds } from "../src/engines/base-image/fast/apply.js";
import { inImageWork } from "../src/engines/base-image/in-image.js";
import { markerOf } from "../src/engines/base-image/marker.js";
import { stagePackages } from "../src/render/stage.js";

/**
 * The fast path's choice, without an image: the base's facts as its own
 * build would have left them, then one change at a time, each either still
 * files only or named as the reason for the full path.
 */
let fx: Fixture;

function facts(f: Fixture, over: Partial<FastBaseFacts> = {}): FastBaseFacts {
  return {
    marker: markerOf(f.model, f.rendered, new Date()),
    release: "trixie",
    arch: "arm64",
    installed: new Set(stagePackages(f.rendered)),
    firstUserName: f.model.user.name,
    localeGen: `${f.model.image.locale} UTF-8\n`,
    keyboard: `XKBLAYOUT="${f.model.image.keyboard.keymap}"\n`,
    ...over,
  };
}
const plain = { compression: "none" as const, shrink: false, full: false };

/** The base's config: the render fixture's, with Node-RED off, as the broker image of the tests has it. */
function config(): Record<string, any> {
  return { ...baseConfig(), nodeRed: { enabled: false } };
}

async function changed(edit: (c: Record<string, any>) => void): Promise<string[]> {
  const c = config();
  edit(c);
  const other = await renderFixture({ config: c, stateDir: fx.state.dir });
  return fullPathReasons(facts(fx), other.rendered, plain);
}

beforeAll(async () => {
  fx = await renderFixture({ config: config() });
});
afterAll(() => removeAllFixtures());

describe("fast path: the decision", () => {
  it("takes the same config, a new domain, new passwords, hostname, time zone, network and SSH keys as files only", async () => {
    expect(fullPathReasons(facts(fx), fx.rendered, plain)).toEqual([]);
    expect(
      await changed((c) => {
        c.tls.domain = "cabin.freemyip.com";
        c.image.hostname = "cabin";
        c.image.timezone = "Europe/Paris";
        c.network.address = "192.168.50.77/24";
      }),
    ).toEqual([]);
  });

  it("names each change that needs the image's own programs", async () => {
    expect(await changed((c) => (c.nodeRed = { enabled: true, install: "firstboot" }))).toEqual([expect.stringMatching(/^packages to install: nodejs$/), expect.stringMatching(/what the stage runs in the image changes \(.*01-node-red/)]);
    expect(await changed((c) => (c.user.name = "pi2"))).toEqual([expect.stringMatching(/first user is renamed \(admin → pi2\): usermod/), expect.stringMatching(/stage runs in the image changes/)]);
    expect(await changed((c) => (c.image.keyboard = { keymap: "fr", layout: "French" }))).toEqual([expect.stringMatching(/keyboard changes to fr: debconf/)]);
    expect(await changed((c) => (c.image.locale = "de_DE.UTF-8"))).toEqual([expect.stringMatching(/locale de_DE.UTF-8 is new to the image: locale-gen/)]);
    expect(await changed((c) => (c.firewall = { enabled: false }))).toEqual([expect.stringMatching(/stage runs in the image changes \(00-broker\/00-packages-nr, 00-broker\/02-run-chroot.sh:/)]);
  });

  it("names the base, the options and an older record", () => {
    expect(fullPathReasons({ ...facts(fx), marker: undefined } as FastBaseFacts, fx.rendered, plain)).toEqual([expect.stringMatching(/not built by pibake/)]);
    const { inImage: _dropped, ...old } = facts(fx).marker!;
    expect(fullPathReasons(facts(fx, { marker: old }), fx.rendered, plain)).toEqual([expect.stringMatching(/does not record what its stage ran/)]);
    expect(fullPathReasons(facts(fx), fx.rendered, { ...plain, compression: "xz", grow: "1G", shrink: true, full: true })).toEqual([
      expect.stringMatching(/compressed \(xz\)/),
      "--grow 1G resizes the root file system (resize2fs)",
      "--shrink resizes the root file system (resize2fs)",
      "--full asks for it",
    ]);
    expect(fullPathReasons(facts(fx, { release: "bookworm" }), fx.rendered, plain)).toEqual([expect.stringMatching(/release changes \(bookworm → trixie\)/)]);
  });

  it("leaves the password hash and the owners out of what runs in the image", async () => {
    const other = await renderFixture({ config: config(), env: { ...(await import("./helpers/render-fixture.js")).DEFAULT_SECRET_ENV, PIBAKE_TEST_USER_PASSWORD: "another-Password-1" }, stateDir: fx.state.dir });
    expect(other.secrets.userPasswordHash).not.toBe(fx.secrets.userPasswordHash);
    expect(inImageWork(other.rendered)).toEqual(inImageWork(fx.rendered));
  });
});

describe("fast path: file edits", () => {
  it("puts the hash and the day of the change into the first user's shadow line only", () => {
    const shadow = "root:*:20000:0:99999:7:::\nadmin:$y$old:20000:0:99999:7:::\n";
    expect(shadowWithHash(shadow, "admin", "$y$new", 20500)).toBe("root:*:20000:0:99999:7:::\nadmin:$y$new:20500:0:99999:7:::\n");
    expect(() => shadowWithHash(shadow, "pi", "$y$new", 1)).toThrow(/no entry for the first user pi/);
  });

  it("reads names and ids from the image's passwd and group", () => {
    expect(parseIds("root:x:0:0:root:/root:/bin/bash\nmosquitto:x:101:104::/var/lib/mosquitto:/usr/sbin/nologin\n# comment\n")).toEqual(
      new Map([
        ["root", 0],
        ["mosquitto", 101],
      ]),
    );
  });
});
