import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { createHash } from "node:crypto";
import { linkSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { tempDir } from "./helpers/cli.js";
import { Ext4Volume } from "../src/image/ext4-volume.js";
import { writePatchedImage } from "../src/image/patched-copy.js";

/**
 * The in-process ext4 of the fast path against e2fsprogs: a small image made
 * by mkfs.ext4 -d (no root), a second "partition" at 1 MiB into the file, the
 * edits held in memory, the new image written in one pass; then debugfs reads
 * every file back, e2fsck -fn finds it clean, sha256sum agrees with the
 * digest of the pass, and the replaced secret is nowhere in the file.
 */
const tmp = tempDir("pibake-ext4-");
const OFFSET = 1 << 20;
const OLD_SECRET = "OLD-SERVER-KEY-BYTES-7f3e9a";
let base = "";

async function debugfs(image: string, request: string): Promise<string> {
  return (await execa("debugfs", ["-R", request, `${image}?offset=${OFFSET}`])).stdout;
}

beforeAll(async () => {
  const tree = path.join(tmp.dir, "tree");
  mkdirSync(path.join(tree, "etc/mosquitto/certs"), { recursive: true });
  writeFileSync(path.join(tree, "etc/passwd"), "root:x:0:0:root:/root:/bin/bash\nmosquitto:x:101:104::/var/lib/mosquitto:/usr/sbin/nologin\n");
  writeFileSync(path.join(tree, "etc/mosquitto/certs/server.key"), `${OLD_SECRET}\n`.repeat(300));
  writeFileSync(path.join(tree, "etc/hostname"), "old\n");
  symlinkSync("/usr/share/zoneinfo/Europe/London", path.join(tree, "etc/localtime"));
  // Two names of one file: replacing one must leave the other's bytes.
  writeFileSync(path.join(tree, "etc/shared"), "SHARED-BYTES\n");
  linkSync(path.join(tree, "etc/shared"), path.join(tree, "etc/shared-too"));
  // A directory that is a link, relative and climbing past the root, as a crafted base has them.
  symlinkSync("../../../etc/mosquitto", path.join(tree, "etc/linked"));
  const fsImage = path.join(tmp.dir, "fs.img");
  await execa("mkfs.ext4", ["-q", "-F", "-d", tree, "-O", "^64bit,^huge_file", fsImage, "16M"]);
  // An image file with the file system 1 MiB in, as a partition would be.
  base = path.join(tmp.dir, "base.img");
  await execa("dd", [`if=${fsImage}`, `of=${base}`, "bs=1M", "seek=1", "conv=sparse", "status=none"]);
});
afterAll(() => tmp.cleanup());

describe("ext4 in-process (libext2fs in WebAssembly)", () => {
  it("writes files with owner and mode, links and removals into a new image, in one pass, leaving the base as it was", async () => {
    const before = readFileSync(base);
    const vol = await Ext4Volume.open(base, OFFSET, { label: "base.img" });
    try {
      expect((await vol.readText("/etc/hostname"))?.trim()).toBe("old");
      expect(await vol.readlink("/etc/localtime")).toBe("/usr/share/zoneinfo/Europe/London");
      expect(await vol.readlink("/etc/hostname")).toBeUndefined();
      await vol.writeFile("/etc/mosquitto/certs/server.key", Buffer.from("NEW-KEY\n"), { mode: 0o600, uid: 101, gid: 104 });
      await vol.writeFile("/etc/new/dir/file", Buffer.from("x"), { mode: 0o644, uid: 0, gid: 0 });
      await vol.symlink("/etc/localtime", "/usr/share/zoneinfo/Europe/Berlin");
      await vol.remove("/etc/hostname");
      await vol.writeFile("/etc/shared", Buffer.from("NEW\n"), { mode: 0o644, uid: 0, gid: 0 });
    } finally {
      await vol.close();
    }
    const out = path.join(tmp.dir, "new.img");
    const written = await writePatchedImage(base, out, vol.changes());
    expect(readFileSync(base).equals(before)).toBe(true);

    expect(await debugfs(out, "cat /etc/mosquitto/certs/server.key")).toBe("NEW-KEY");
    expect(await debugfs(out, "stat /etc/mosquitto/certs/server.key")).toMatch(/Mode:\s+0600[\s\S]*User:\s+101\s+Group:\s+104/);
    expect(await debugfs(out, "stat /etc/new/dir")).toMatch(/Type: directory\s+Mode:\s+0755/);
    expect(await debugfs(out, "stat /etc/localtime")).toMatch(/Fast link dest: "\/usr\/share\/zoneinfo\/Europe\/Berlin"/);
    expect(await debugfs(out, "ls /etc")).not.toMatch(/hostname/);
    expect(await debugfs(out, "cat /etc/shared")).toBe("NEW");
    expect(await debugfs(out, "cat /etc/shared-too")).toBe("SHARED-BYTES");
    const fsck = await execa("e2fsck", ["-fn", `${out}?offset=${OFFSET}`], { reject: false, all: true });
    expect(fsck.exitCode, fsck.all).toBe(0);

    expect(written.sha256).toBe(createHash("sha256").update(readFileSync(out)).digest("hex"));
    expect(statSync(out).size).toBe(statSync(base).size);
    expect(readFileSync(out).includes(OLD_SECRET)).toBe(false);
    expect(readFileSync(base).includes(OLD_SECRET)).toBe(true);
    // The bmap's ranges cover the written data: the file system's first block is in it.
    expect(written.bmap.ranges.some((r) => r.first * 4096 <= OFFSET && (r.last + 1) * 4096 > OFFSET)).toBe(true);
  });

  it("reads through a directory that is a link, and refuses to write or remove behind one before zeroing anything", async () => {
    const vol = await Ext4Volume.open(base, OFFSET, { label: "base.img" });
    try {
      expect(await vol.readText("/etc/linked/certs/server.key")).toContain(OLD_SECRET);
      expect(await vol.linkedDirectoryOf("/etc/linked/certs/server.key")).toBe("/etc/linked");
      expect(await vol.linkedDirectoryOf("/etc/linked")).toBeUndefined();
      expect(await vol.linkedDirectoryOf("/etc/mosquitto/certs/server.key")).toBeUndefined();
      expect(await vol.linkedDirectoryOf("/etc/absent/dir/file")).toBeUndefined();
      const refused = /base\.img: \/etc\/linked is a link in the image, on the way to \/etc\/linked\/certs\/(server\.key|new)/;
      await expect(vol.remove("/etc/linked/certs/server.key")).rejects.toThrow(refused);
      await expect(vol.writeFile("/etc/linked/certs/server.key", Buffer.from("x"), { mode: 0o600, uid: 0, gid: 0 })).rejects.toThrow(refused);
      await expect(vol.symlink("/etc/linked/certs/new", "/x")).rejects.toThrow(refused);
      expect(await vol.readText("/etc/mosquitto/certs/server.key")).toContain(OLD_SECRET);
    } finally {
      await vol.close();
    }
  });
});
