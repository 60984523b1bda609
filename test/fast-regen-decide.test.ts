import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { execa } from "execa";
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";
import { fullPathReasons, type FastBaseFacts } from "../src/engines/base-image/fast/decide.js";
import { shadowWithHash } from "../src/engines/base-image/fast/plan.js";
import { parseIds } from "../src/engines/base-image/fast/apply.js";
import { regenerateFast } from "../src/engines/base-image/fast/regenerate.js";
import { buildFromBase } from "../src/engines/base-image/build.js";
import { inImageWork } from "../src/engines/base-image/in-image.js";
import { MARKER_PATH, markerOf, markerText, type ImageMarker } from "../src/engines/base-image/marker.js";
import { stagePackages } from "../src/render/stage.js";
import type { EngineInput, StepReporter } from "../src/engines/types.js";
import type { LoadedConfig } from "../src/config/load.js";
import type { CleanupScope } from "../src/cleanup.js";

/**
 * The fast path's choice: first without an image, the base's facts as its
 * own build would have left them, then one change at a time, each either
 * still files only or named as the reason for the full path. Then with a
 * small image (mkfs.vfat, mkfs.ext4 -d) whose directories on the way to the
 * files a regeneration writes or removes are links.
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
    expect(await changed((c) => (c.nodeRed = { enabled: true, install: "firstboot" }))).toEqual([
      expect.stringMatching(/^packages to install: nodejs$/),
      expect.stringMatching(/what the stage runs in the image changes \(.*01-node-red/),
    ]);
    expect(await changed((c) => (c.user.name = "pi2"))).toEqual([
      expect.stringMatching(/first user is renamed \(admin → pi2\): usermod/),
      expect.stringMatching(/stage runs in the image changes/),
    ]);
    expect(await changed((c) => (c.image.keyboard = { keymap: "fr", layout: "French" }))).toEqual([expect.stringMatching(/keyboard changes to fr: debconf/)]);
    expect(await changed((c) => (c.image.locale = "de_DE.UTF-8"))).toEqual([expect.stringMatching(/locale de_DE.UTF-8 is new to the image: locale-gen/)]);
    expect(await changed((c) => (c.firewall = { enabled: false }))).toEqual([
      expect.stringMatching(/stage runs in the image changes \(00-broker\/00-packages-nr, 00-broker\/02-run-chroot.sh:/),
    ]);
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
    const other = await renderFixture({
      config: config(),
      env: { ...(await import("./helpers/render-fixture.js")).DEFAULT_SECRET_ENV, PIBAKE_TEST_USER_PASSWORD: "another-Password-1" },
      stateDir: fx.state.dir,
    });
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

const BOOT_START = 2048;
const BOOT_SECTORS = 8192;
const ROOT_START = BOOT_START + BOOT_SECTORS;
const ROOT_SECTORS = 32768;

/** Sector 0 with the two partitions of a Raspberry Pi OS image: FAT boot, ext4 root. */
function raspiMbr(): Buffer {
  const s = Buffer.alloc(512);
  for (const [i, type, start, sectors] of [
    [0, 0x0c, BOOT_START, BOOT_SECTORS],
    [1, 0x83, ROOT_START, ROOT_SECTORS],
  ] as const) {
    s[446 + 16 * i + 4] = type;
    s.writeUInt32LE(start, 446 + 16 * i + 8);
    s.writeUInt32LE(sectors, 446 + 16 * i + 12);
  }
  s.writeUInt16BE(0x55aa, 510);
  return s;
}

/** The first bytes of an arm64 program: what the fast path reads of /usr/bin/bash for the architecture. */
function arm64ElfHeader(): Buffer {
  const h = Buffer.alloc(64);
  h.writeUInt32BE(0x7f454c46, 0);
  h[4] = 2;
  h[5] = 1;
  h[6] = 1;
  h.writeUInt16LE(0xb7, 18);
  return h;
}

/**
 * An image pibake built, in miniature: what the fast path reads of its root
 * (release, architecture, packages, the first user, locale, keyboard, time
 * zone, build.json from `marker`) and every owner of the overlay in passwd
 * and group. `home` is the first user's home in /etc/passwd; `craft` adds
 * links to the tree before mkfs.ext4 takes it.
 */
async function miniImage(dir: string, marker: ImageMarker, home: string, craft: (root: string) => void = () => {}): Promise<string> {
  const tree = path.join(dir, "tree");
  const put = (p: string, content: string | Buffer) => {
    mkdirSync(path.dirname(path.join(tree, p)), { recursive: true });
    writeFileSync(path.join(tree, p), content);
  };
  const user = fx.model.user.name;
  const owners = [
    ...new Set(fx.rendered.overlay.flatMap((f) => [f.owner, f.group]).filter((o): o is string => typeof o === "string" && o !== "root" && o !== user)),
  ];
  put(
    "etc/passwd",
    [
      `root:x:0:0:root:/root:/bin/bash`,
      `${user}:x:1000:1000:,,,:${home}:/bin/bash`,
      ...owners.map((o, i) => `${o}:x:${100 + i}:${100 + i}::/nonexistent:/usr/sbin/nologin`),
      "",
    ].join("\n"),
  );
  put("etc/group", [`root:x:0:`, `${user}:x:1000:`, ...owners.map((o, i) => `${o}:x:${100 + i}:`), ""].join("\n"));
  put("etc/shadow", `root:*:20000:0:99999:7:::\n${user}:!:20000:0:99999:7:::\n`);
  put("etc/os-release", `VERSION_CODENAME=${marker.release}\n`);
  put("usr/bin/bash", arm64ElfHeader());
  put("var/lib/dpkg/status", marker.packages.map((p) => `Package: ${p}\nStatus: install ok installed\n`).join("\n"));
  put("etc/locale.gen", `${fx.model.image.locale} UTF-8\n`);
  put("etc/default/keyboard", `XKBLAYOUT="${fx.model.image.keyboard.keymap}"\n`);
  put("etc/default/locale", `LANG=${fx.model.image.locale}\n`);
  put("etc/hostname", "old\n");
  put("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\told\n");
  put(`usr/share/zoneinfo/${fx.model.image.timezone}`, "TZif2");
  put(MARKER_PATH, markerText(marker));
  mkdirSync(path.join(tree, home.slice(1)), { recursive: true });
  craft(tree);
  const root = path.join(dir, "root.img");
  const boot = path.join(dir, "boot.img");
  await execa("mkfs.ext4", ["-q", "-F", "-d", tree, root, `${(ROOT_SECTORS * 512) / 1024}k`]);
  await execa("mkfs.vfat", ["-C", boot, String((BOOT_SECTORS * 512) / 1024)]);
  const image = path.join(dir, "base.img");
  const bytes = Buffer.alloc((ROOT_START + ROOT_SECTORS) * 512);
  raspiMbr().copy(bytes, 0);
  readFileSync(boot).copy(bytes, BOOT_START * 512);
  readFileSync(root).copy(bytes, ROOT_START * 512);
  writeFileSync(image, bytes);
  return image;
}

/** The build's input from `image`, as src/build.ts hands it to the engine (only what the base-image engine reads). */
function engineInput(dir: string, image: string): EngineInput {
  return {
    request: { base: image },
    config: { model: fx.model, warnings: [] } satisfies LoadedConfig,
    state: fx.state,
    secrets: fx.secrets,
    rendered: fx.rendered,
    scope: { signal: new AbortController().signal } as CleanupScope,
    workDir: path.join(dir, "work"),
    logPath: path.join(dir, "build.log"),
    verbose: false,
  };
}

const quiet: StepReporter = { live: false, begin() {}, skip() {}, status() {}, info() {}, warn() {}, detail() {} };

describe("fast path: directories that are links in the base", () => {
  /** A directory of the image (not of the host) that the links lead to. */
  const ELSEWHERE = "/var/backups";

  it("applies to the miniature image as it is: the base is one the fast path takes", async () => {
    const dir = tempDir("pibake-links-");
    const input = engineInput(dir, await miniImage(dir, markerOf(fx.model, fx.rendered, new Date()), "/srv/admin"));
    const outcome = await regenerateFast(input, quiet);
    expect(outcome.kind === "full" ? outcome.reasons : []).toEqual([]);
    if (outcome.kind !== "built") throw new Error("the fast path was not taken");
    // The keys land in the home that /etc/passwd names.
    const keys = await execa("debugfs", ["-R", "cat /srv/admin/.ssh/authorized_keys", `${outcome.result.imagePath}?offset=${ROOT_START * 512}`]);
    expect(keys.stdout).toBe(fx.model.user.sshKeys.join("\n"));
  });

  it("takes the root path when the home directory that /etc/passwd names (not /home/<name>) is a link, naming it", async () => {
    const dir = tempDir("pibake-links-");
    const image = await miniImage(dir, markerOf(fx.model, fx.rendered, new Date()), "/srv/admin", (root) => {
      mkdirSync(path.join(root, ELSEWHERE.slice(1)), { recursive: true });
      rmSync(path.join(root, "srv/admin"), { recursive: true });
      symlinkSync(ELSEWHERE, path.join(root, "srv/admin"));
    });
    const input = engineInput(dir, image);
    const outcome = await regenerateFast(input, quiet);
    expect(outcome).toEqual({
      kind: "full",
      reasons: [expect.stringContaining("links in the image (/srv/admin, on the way to /srv/admin/.ssh/authorized_keys)")],
    });
    expect(readFileSync(input.logPath, "utf8")).toMatch(/fast path: not taken: .*\/srv\/admin, on the way to \/srv\/admin\/\.ssh\/authorized_keys/);

    // As a user: exit 2, the reason and sudo -E.
    const getuid = vi.spyOn(process, "getuid").mockReturnValue(1000);
    try {
      await expect(buildFromBase(input, quiet)).rejects.toMatchObject({
        exitCode: 2,
        message: expect.stringMatching(/needs root: .*\/srv\/admin, on the way to .*Run it with sudo -E/),
      });
    } finally {
      getuid.mockRestore();
    }
  });

  it("takes the root path when a file it only removes lies behind a link: an earlier overlay's file, piwiz's autostart entry", async () => {
    const dir = tempDir("pibake-links-");
    const fresh = markerOf(fx.model, fx.rendered, new Date());
    const before = { ...fresh, overlay: [...fresh.overlay, "etc/retired/old.conf"] };
    const image = await miniImage(dir, before, "/home/admin", (root) => {
      mkdirSync(path.join(root, ELSEWHERE.slice(1), "autostart"), { recursive: true });
      writeFileSync(path.join(root, ELSEWHERE.slice(1), "old.conf"), "an earlier overlay's file\n");
      writeFileSync(path.join(root, ELSEWHERE.slice(1), "autostart/piwiz.desktop"), "[Desktop Entry]\n");
      symlinkSync(ELSEWHERE, path.join(root, "etc/retired"));
      symlinkSync(`../..${ELSEWHERE}`, path.join(root, "etc/xdg"));
    });
    const outcome = await regenerateFast(engineInput(dir, image), quiet);
    expect(outcome).toEqual({
      kind: "full",
      reasons: [
        expect.stringContaining(
          "links in the image (/etc/xdg, on the way to /etc/xdg/autostart/piwiz.desktop; /etc/retired, on the way to /etc/retired/old.conf)",
        ),
      ],
    });
  });
});
