import { afterAll, describe, expect, it } from "vitest";
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ImageRoot } from "../src/host/image-root.js";
import { PibakeError } from "../src/errors.js";
import { applySystemSettings } from "../src/engines/base-image/system.js";
import { runStage } from "../src/engines/stage-runner.js";
import { systemSettings } from "../src/render/system.js";
import { hostChroot } from "./helpers/host-chroot.js";
import { filesWith, hostCanaries, linkAway, type HostileTree } from "./helpers/hostile-tree.js";
import { removeAllFixtures, renderFixture, tempDir } from "./helpers/render-fixture.js";

/**
 * Host-side access to an image's files (src/host/image-root.ts) and the
 * stage's host script, against trees whose links name host directories that
 * hold canaries (test/helpers/hostile-tree.ts). A whole build from such a
 * base is test/hostile-base.test.ts.
 */
let tree: HostileTree | undefined;

/** Fresh canaries on the host for each case. */
function canaries(): HostileTree {
  tree?.remove();
  tree = hostCanaries();
  return tree;
}

afterAll(() => {
  tree?.remove();
  removeAllFixtures();
});

describe("ImageRoot resolves every path inside the image", () => {
  it.each(["absolute", "relative"] as const)("%s links lead to the image's own files, never the host's", (style) => {
    const { canary, marker, digest } = canaries();
    const before = digest();
    const dir = tempDir("pibake-imageroot-");
    mkdirSync(path.join(dir, "etc/default"), { recursive: true });
    writeFileSync(path.join(dir, "etc/default/keyboard"), 'XKBLAYOUT="gb"\n');
    writeFileSync(path.join(dir, "etc/hosts"), "127.0.0.1\tlocalhost\n");
    linkAway(dir, canary, style);
    const root = new ImageRoot(dir);

    expect(root.path("/etc/default/keyboard")).toBe(path.join(dir, canary, "etc/default/keyboard"));
    expect(root.readText("/etc/hosts")).toBe("127.0.0.1\tlocalhost\n");
    root.write("/etc/default/keyboard", 'XKBLAYOUT="de"\n');
    root.write("/etc/hostname", "pi\n");
    root.write("/var/lib/pibake/build.json", "{}\n");
    root.write("/etc/systemd/system/x.service.d/50.conf", "[Service]\n");
    root.symlink("/etc/ssh/link", "/etc/hosts");
    root.mkdir("/usr/local/lib/pibake");
    root.remove("/etc/machine-id");
    root.write("/etc/mosquitto/passwd", "x\n", 0o640);
    root.rename("/etc/mosquitto/passwd", "/etc/mosquitto/passwd.old");

    expect(readFileSync(path.join(dir, canary, "etc/default/keyboard"), "utf8")).toBe('XKBLAYOUT="de"\n');
    expect(readFileSync(path.join(dir, canary, "etc/hostname"), "utf8")).toBe("pi\n");
    expect(existsSync(path.join(dir, canary, "etc/systemd/system/x.service.d/50.conf"))).toBe(true);
    expect(readlinkSync(path.join(dir, canary, "etc/ssh/link"))).toBe("/etc/hosts");
    expect(readFileSync(path.join(dir, canary, "etc/mosquitto/passwd.old"), "utf8")).toBe("x\n");
    // remove() took the link away, not what it named.
    expect(lstatSync(path.join(dir, canary, "etc/machine-id")).isFile()).toBe(true);
    expect(existsSync(path.join(dir, "etc/machine-id"))).toBe(false);
    expect(digest()).toBe(before);
  });

  it("refuses a loop of links and a path through a file, naming them (exit 2)", () => {
    const dir = tempDir("pibake-imageroot-");
    mkdirSync(path.join(dir, "etc"));
    symlinkSync("/etc/b", path.join(dir, "etc/a"));
    symlinkSync("a", path.join(dir, "etc/b"));
    writeFileSync(path.join(dir, "etc/hostname"), "pi\n");
    const root = new ImageRoot(dir);
    const loop = (() => {
      try {
        root.read("/etc/a/x");
      } catch (err) {
        return err;
      }
    })();
    expect(loop).toBeInstanceOf(PibakeError);
    expect((loop as PibakeError).exitCode).toBe(2);
    expect((loop as Error).message).toContain("/etc/a -> /etc/b");
    expect(() => root.write("/etc/hostname/x", "y")).toThrow(/\/etc\/hostname is not a directory/);
  });

  it("applies the system settings through the image's links: the host's files are neither read nor written", async () => {
    const { canary, marker, digest } = canaries();
    const before = digest();
    const f = await renderFixture();
    const dir = tempDir("pibake-imageroot-");
    const boot = tempDir("pibake-imageroot-boot-");
    for (const d of ["etc/default", "usr/share/zoneinfo/Europe", "usr/lib/systemd/system"]) mkdirSync(path.join(dir, d), { recursive: true });
    writeFileSync(path.join(dir, "usr/share/zoneinfo/Europe/Berlin"), "TZif");
    writeFileSync(path.join(dir, "etc/locale.gen"), "# en_GB.UTF-8 UTF-8\n");
    writeFileSync(path.join(dir, "etc/hosts"), "127.0.0.1\tlocalhost\n");
    linkAway(dir, canary, "absolute");
    applySystemSettings(new ImageRoot(dir), boot, systemSettings(f.model), f.secrets.userPasswordHash);
    expect(readFileSync(path.join(dir, canary, "etc/hosts"), "utf8")).toContain(`127.0.1.1\t${f.model.image.hostname}`);
    expect(readFileSync(path.join(dir, canary, "etc/hostname"), "utf8")).toBe(`${f.model.image.hostname}\n`);
    expect(readFileSync(path.join(dir, canary, "etc/default/keyboard"), "utf8")).toContain(`XKBLAYOUT="${f.model.image.keyboard.keymap}"`);
    expect(filesWith(dir, marker)).toEqual([]);
    expect(digest()).toBe(before);
  });
});

describe("the stage's host script unpacks the overlay inside the image", () => {
  it.each(["absolute", "relative"] as const)("through %s links, into the image and nowhere else", async (style) => {
    const { canary, marker, digest } = canaries();
    const before = digest();
    const f = await renderFixture();
    const dir = tempDir("pibake-stage-links-");
    const rootfs = path.join(dir, "rootfs");
    await hostChroot(rootfs);
    linkAway(rootfs, canary, style);
    // Only the overlay's unpacking: the packages and the chroot scripts need the image's own programs.
    const stage = path.join(dir, "stage");
    for (const s of f.rendered.stage.filter((s) => s.path === "00-broker/01-run.sh" || s.path.startsWith("00-broker/files/"))) {
      const p = path.join(stage, s.path);
      mkdirSync(path.dirname(p), { recursive: true });
      writeFileSync(p, s.content, { mode: s.mode });
      chmodSync(p, s.mode);
    }
    await runStage({ stageDir: stage, rootfs, skipPackages: true });

    const root = new ImageRoot(rootfs);
    for (const o of f.rendered.overlay) {
      expect(root.read(o.path)?.equals(o.content), o.path).toBe(true);
      expect((root.stat(o.path)!.mode & 0o7777).toString(8), o.path).toBe(o.mode.toString(8));
    }
    // The image's links are still links, and what the overlay put under them is in the image's own directories.
    expect(lstatSync(path.join(rootfs, "etc/mosquitto")).isSymbolicLink()).toBe(true);
    expect(existsSync(path.join(rootfs, canary, "etc/mosquitto/conf.d/pibake.conf"))).toBe(true);
    expect(filesWith(rootfs, marker)).toEqual([]);
    expect(digest()).toBe(before);
  });
});
