import { execa, execaSync } from "execa";
import { closeSync, mkdirSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { dataRanges } from "../../src/image/sparse.js";
import path from "node:path";
import { expect } from "vitest";
import { parseMbr } from "../../src/image/partitions.js";
import { unmountTree } from "../../src/host/mounts.js";
import type { Rendered } from "../../src/render/index.js";

/** Reading built images in tests: by partition offset, with no partition scan and no vfat driver. */

export function readAt(file: string, pos: number, len: number): Buffer {
  const fd = openSync(file, "r");
  try {
    const b = Buffer.alloc(len);
    return b.subarray(0, readSync(fd, b, 0, len, pos));
  } finally {
    closeSync(fd);
  }
}

/** The root partition of an image, on a loop device by offset, mounted (read-only unless asked). */
export async function mountRoot(image: string, dir: string, opts: { readWrite?: boolean } = {}): Promise<{ dev: string; release: () => Promise<void> }> {
  const root = parseMbr(readAt(image, 0, 512)).partitions[1]!;
  mkdirSync(dir, { recursive: true });
  const dev = (
    await execa("losetup", [
      "--find",
      "--show",
      ...(opts.readWrite ? [] : ["--read-only"]),
      "--offset",
      String(root.offset),
      "--sizelimit",
      String(root.size),
      image,
    ])
  ).stdout.trim();
  try {
    await execa("mount", ["-t", "ext4", ...(opts.readWrite ? [] : ["-o", "ro"]), dev, dir]);
  } catch (e) {
    await execa("losetup", ["--detach", dev], { reject: false });
    throw e;
  }
  return {
    dev,
    release: async () => {
      await unmountTree(dir);
      await execa("losetup", ["--detach", dev], { reject: false });
    },
  };
}

/** A file of the image's FAT boot partition, read in place with mtools; undefined when it is not there. */
export function bootFile(image: string, name: string): string | undefined {
  const boot = parseMbr(readAt(image, 0, 512)).partitions[0]!;
  const r = execaSync("mtype", ["-i", `${image}@@${boot.offset}`, `::/${name}`], { reject: false, env: { MTOOLS_SKIP_CHECK: "1" } });
  return r.exitCode === 0 ? String(r.stdout) : undefined;
}

/** Every rendered overlay file is in the mounted root with its content, mode, and owner by the image's own ids. */
export function expectOverlayInRoot(root: string, rendered: Rendered): void {
  const ids = (file: string) =>
    new Map(
      readFileSync(path.join(root, file), "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => [l.split(":")[0]!, Number(l.split(":")[2])]),
    );
  const users = ids("etc/passwd");
  const groups = ids("etc/group");
  expect(rendered.overlay.length).toBeGreaterThan(8);
  for (const f of rendered.overlay) {
    const p = path.join(root, f.path);
    const st = statSync(p);
    expect({ file: f.path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }).toEqual({
      file: f.path,
      mode: f.mode,
      uid: users.get(f.owner),
      gid: groups.get(f.group),
    });
    expect(readFileSync(p).equals(f.content), `${f.path} differs from the render`).toBe(true);
  }
  expect(users.get("mosquitto")).toBeGreaterThan(0);
  // The overlay did not change directories that were there.
  expect(statSync(path.join(root, "etc")).mode & 0o7777).toBe(0o755);
}

/** Occurrences of each needle in the image's data (holes hold nothing), read in overlapping chunks. */
export async function countInImage(image: string, needles: string[]): Promise<Map<string, number>> {
  const counts = new Map(needles.map((n) => [n, 0]));
  const bufs = needles.map((n) => Buffer.from(n));
  const overlap = Math.max(...bufs.map((b) => b.length)) - 1;
  const size = statSync(image).size;
  const fd = openSync(image, "r");
  try {
    for (const r of await dataRanges(image, size)) {
      const chunk = 8 << 20;
      for (let pos = r.start; pos < r.end; pos += chunk) {
        const len = Math.min(chunk + overlap, r.end - pos);
        const b = Buffer.alloc(len);
        readSync(fd, b, 0, len, pos);
        bufs.forEach((needle, i) => {
          // Count matches that start in this chunk's own part (not in the overlap, which the next chunk owns).
          for (let at = b.indexOf(needle); at >= 0 && at < Math.min(chunk, len); at = b.indexOf(needle, at + 1))
            counts.set(needles[i]!, counts.get(needles[i]!)! + 1);
        });
      }
    }
  } finally {
    closeSync(fd);
  }
  return counts;
}
