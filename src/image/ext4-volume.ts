/**
 * An ext4 file system inside an image file, read and written in-process
 * through libext2fs compiled to WebAssembly (npm `ext2fs`, Apache-2.0, the
 * library balena's tools use): no root, no loop device, no mount, no
 * external program, on any OS Node runs on.
 *
 * The image file is never written: what libext2fs writes is kept in memory
 * (`changes()`), laid over what it reads, and written out with the rest of
 * the image in one pass (patched-copy.ts). Paths are the image's own: the
 * library resolves every link from the file system's root, so no link can
 * lead outside the image. Reads follow links in directories; writes and
 * removals refuse them (libext2fs's unlink stops with ENOTDIR behind some,
 * after zeroing the file): the fast path checks `linkedDirectoryOf` first
 * and leaves such images to the root path. A file that is replaced or
 * removed is first overwritten with zeros in place, so that its old bytes (a
 * server key, a password hash, a token) do not survive in the freed blocks.
 */
import { createRequire } from "node:module";
import { promises as fsp } from "node:fs";
import { PibakeError } from "../errors.js";
import type { ImagePatch } from "./patched-copy.js";

export type Ext4EntryType = "file" | "dir" | "link" | "other";

export interface Ext4Stat {
  type: Ext4EntryType;
  /** Permission bits (and setuid, setgid, sticky). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Hard links to the inode. */
  links: number;
}

/** The part of ext2fs's promise API that pibake uses (the package ships no types). */
interface Ext2Fs {
  readdir(p: string): Promise<string[]>;
  readlink(p: string): Promise<string>;
  lstat(
    p: string,
  ): Promise<{ mode: number; uid: number; gid: number; size: number; nlink: number; isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }>;
  open(p: string, flags: string | number, mode?: number): Promise<Ext2FileHandle>;
  mkdir(p: string, mode: number): Promise<void>;
  unlink(p: string): Promise<void>;
  symlink(target: string, p: string): Promise<void>;
  lchown(p: string, uid: number, gid: number): Promise<void>;
}
interface Ext2FileHandle {
  read(buf: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number }>;
  write(buf: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  chown(uid: number, gid: number): Promise<void>;
  chmod(mode: number): Promise<void>;
  close(): Promise<void>;
}
interface Ext2FsModule {
  mount(disk: unknown, offset: number): Promise<{ promises: Ext2Fs }>;
  umount(fs: unknown): Promise<void>;
}

const S_IFMT = 0o170000;
const TYPE_OF: Record<number, Ext4EntryType> = { 0o100000: "file", 0o040000: "dir", 0o120000: "link" };
/** Linux's MAXSYMLINKS, as the image's own lookups would stop. */
const MAX_LINKS = 40;
const SCRUB_CHUNK = 1 << 20;

let loaded: Ext2FsModule | undefined;

/**
 * The WebAssembly module, loaded on first use. Emscripten's glue adds
 * process-wide handlers that rethrow every uncaught error, which would bypass
 * pibake's own handler (src/cli.ts): they are taken off again.
 */
function ext2fs(): Ext2FsModule {
  if (loaded) return loaded;
  const before = new Set([...process.listeners("uncaughtException"), ...process.listeners("unhandledRejection")]);
  loaded = createRequire(import.meta.url)("ext2fs") as Ext2FsModule;
  for (const l of process.listeners("uncaughtException")) if (!before.has(l)) process.removeListener("uncaughtException", l);
  for (const l of process.listeners("unhandledRejection")) if (!before.has(l)) process.removeListener("unhandledRejection", l);
  return loaded;
}

export class Ext4Volume {
  private constructor(
    private readonly file: fsp.FileHandle,
    private readonly disk: MemoryOverlayDisk,
    private readonly mounted: { promises: Ext2Fs },
    /** For messages: the image and the partition. */
    readonly label: string,
  ) {}

  private get fs(): Ext2Fs {
    return this.mounted.promises;
  }

  /** The file system at byte `offset` of `image`, opened for reading; changes stay in memory. Close it with `close()`. */
  static async open(image: string, offset: number, opts: { label: string }): Promise<Ext4Volume> {
    const file = await fsp.open(image, "r");
    const disk = new MemoryOverlayDisk(file);
    try {
      return new Ext4Volume(file, disk, await ext2fs().mount(disk, offset), opts.label);
    } catch (err) {
      await file.close();
      throw new PibakeError(`${opts.label}: cannot read its ext4 root file system in-process (${(err as Error).message})`);
    }
  }

  /** Unmount (libext2fs writes its bitmaps and counts then) and close the image; `changes()` stays. */
  async close(): Promise<void> {
    try {
      await ext2fs().umount(this.mounted.promises);
    } finally {
      await this.file.close();
    }
  }

  /** What libext2fs wrote, in order, at byte positions of the image file: the edits, once closed. */
  changes(): readonly ImagePatch[] {
    return this.disk.writes;
  }

  async lstat(p: string): Promise<Ext4Stat | undefined> {
    const st = await this.fs.lstat(p).catch(missing);
    if (!st) return undefined;
    return { type: TYPE_OF[st.mode & S_IFMT] ?? "other", mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, size: st.size, links: st.nlink };
  }

  /** A regular file's bytes (ext2fs's own readFile decodes them as text). */
  async read(p: string): Promise<Buffer | undefined> {
    const fh = await this.fs.open(p, "r").catch(missing);
    if (!fh) return undefined;
    try {
      const buf = Buffer.alloc((await fh.stat()).size);
      for (let got = 0; got < buf.length; ) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
        if (bytesRead <= 0) return buf.subarray(0, got);
        got += bytesRead;
      }
      return buf;
    } finally {
      await fh.close();
    }
  }

  async readText(p: string): Promise<string | undefined> {
    return (await this.read(p))?.toString("utf8");
  }

  /** A link's target; undefined when `p` is absent or not a link. */
  async readlink(p: string): Promise<string | undefined> {
    return this.fs.readlink(p).catch((err: unknown) => ((err as { code?: string }).code === "EINVAL" ? undefined : missing(err)));
  }

  async list(p: string): Promise<string[]> {
    return ((await this.fs.readdir(p).catch(missing)) ?? []).filter((n) => n !== "." && n !== "..");
  }

  /** `p` with a link in its last component followed (inside the image), as a program in the image writing to it would. */
  async resolveLast(p: string): Promise<string> {
    let cur = normal(p);
    for (let i = 0; i < MAX_LINKS; i++) {
      const target = await this.readlink(cur);
      if (target === undefined) return cur;
      cur = normal(target.startsWith("/") ? target : `${parentOf(cur)}/${target}`);
    }
    throw new PibakeError(`${this.label}: the image's links do not end at a file for ${p} (more than ${MAX_LINKS} links)`, 2);
  }

  /**
   * The first directory on the way to `p` (not `p` itself) that is a
   * symbolic link in the image, if any. Past it the path is the link's
   * target's, so the walk stops there.
   */
  async linkedDirectoryOf(p: string): Promise<string | undefined> {
    const dirs = normal(p).split("/").filter(Boolean).slice(0, -1);
    let cur = "";
    for (const part of dirs) {
      cur = `${cur}/${part}`;
      const st = await this.lstat(cur);
      if (st?.type === "link") return cur;
      // Absent: made by mkdirs; a file: refused there.
      if (st?.type !== "dir") return undefined;
    }
    return undefined;
  }

  /**
   * A new regular file at `p` with `content`, `mode` and owner, replacing what
   * is there (a link itself, not its target, as tar does). Missing parents are
   * made as tar makes them (0755, root).
   */
  async writeFile(p: string, content: Buffer, attrs: { mode: number; uid: number; gid: number }): Promise<void> {
    await this.refuseLinkedDirectory(p);
    await this.mkdirs(parentOf(normal(p)));
    await this.removeEntry(p);
    const fh = await this.fs.open(p, "wx", attrs.mode);
    try {
      await writeAll(fh, content);
      await fh.chown(attrs.uid, attrs.gid);
      await fh.chmod(attrs.mode);
    } finally {
      await fh.close();
    }
  }

  /** A symbolic link at `p` to `target` (stored as given), replacing what is there; owned by root as `ln -sf` as root makes it. */
  async symlink(p: string, target: string): Promise<void> {
    await this.remove(p);
    await this.fs.symlink(target, p);
  }

  /** Remove a file or link (its bytes zeroed first); nothing when absent. A directory is refused: pibake removes files only. */
  async remove(p: string): Promise<void> {
    await this.refuseLinkedDirectory(p);
    await this.removeEntry(p);
  }

  /** remove(), once the way to `p` is known to hold no link. */
  private async removeEntry(p: string): Promise<void> {
    const st = await this.lstat(p);
    if (!st) return;
    if (st.type === "dir") throw new PibakeError(`${this.label}: ${p} is a directory where pibake writes or removes a file`, 2);
    // A file with other hard links keeps its bytes there: only the name goes, as with tar.
    if (st.type === "file" && st.links === 1) await this.scrub(p, st.size);
    await this.fs.unlink(p);
  }

  /** Overwrite a file's bytes with zeros where they lie, so that freeing its blocks leaves nothing of it. */
  private async scrub(p: string, size: number): Promise<void> {
    if (size === 0) return;
    const fh = await this.fs.open(p, "r+");
    try {
      const zeros = Buffer.alloc(Math.min(size, SCRUB_CHUNK));
      for (let pos = 0; pos < size; pos += zeros.length) {
        const n = Math.min(zeros.length, size - pos);
        await fh.write(zeros, 0, n, pos);
      }
    } finally {
      await fh.close();
    }
  }

  /** Make `dir` and its missing parents (0755, root); an existing one keeps its owner and mode, as tar --no-overwrite-dir does. */
  async mkdirs(dir: string): Promise<void> {
    let cur = "";
    for (const part of normal(dir).split("/").filter(Boolean)) {
      cur = `${cur}/${part}`;
      const st = await this.fs.lstat(cur).catch(missing);
      if (!st) await this.fs.mkdir(cur, 0o755);
      else if (st.isSymbolicLink()) throw this.linkedError(cur, dir);
      else if (!st.isDirectory()) throw new PibakeError(`${this.label}: ${cur} is not a directory, but pibake writes below it`, 2);
    }
  }

  private async refuseLinkedDirectory(p: string): Promise<void> {
    const linked = await this.linkedDirectoryOf(p);
    if (linked) throw this.linkedError(linked, p);
  }

  private linkedError(link: string, p: string): PibakeError {
    return new PibakeError(
      `${this.label}: ${link} is a link in the image, on the way to ${p}: only the full build writes through such links (as root: sudo -E pibake build … --full)`,
      2,
    );
  }
}

/**
 * The image file as libext2fs's disk, never written: libext2fs writes even
 * to read (access times, the superblock's mount time), and the fast path
 * writes its copy of the image in one pass afterwards. Writes are kept in
 * memory and laid over what is read.
 */
class MemoryOverlayDisk {
  readonly writes: ImagePatch[] = [];
  constructor(private readonly file: fsp.FileHandle) {}

  async read(buf: Buffer, off: number, len: number, pos: number) {
    const r = await this.file.read(buf, off, len, pos);
    // Past the end of the file (a hole at its end) reads as zeros.
    if (r.bytesRead < len) buf.fill(0, off + r.bytesRead, off + len);
    for (const w of this.writes) {
      const from = Math.max(pos, w.pos);
      const to = Math.min(pos + len, w.pos + w.bytes.length);
      if (from < to) w.bytes.copy(buf, off + from - pos, from - w.pos, to - w.pos);
    }
    return { bytesRead: len, buffer: buf };
  }

  async write(buf: Buffer, off: number, len: number, pos: number) {
    this.writes.push({ pos, bytes: Buffer.from(buf.subarray(off, off + len)) });
    return { bytesWritten: len, buffer: buf };
  }

  // Freed blocks stay as they are: the blocks pibake frees are zeroed before (scrub).
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
}

async function writeAll(fh: Ext2FileHandle, content: Buffer): Promise<void> {
  for (let off = 0; off < content.length; ) {
    const { bytesWritten } = await fh.write(content, off, content.length - off, off);
    if (bytesWritten <= 0) throw new Error("the file system accepted no more bytes (full?)");
    off += bytesWritten;
  }
}

/** `undefined` for "no such file" (and a path through a file), the error otherwise. */
function missing(err: unknown): undefined {
  const code = (err as { code?: string }).code;
  if (code === "ENOENT" || code === "ENOTDIR") return undefined;
  throw err;
}

function normal(p: string): string {
  const out: string[] = [];
  for (const part of p.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return `/${out.join("/")}`;
}

function parentOf(p: string): string {
  const n = normal(p);
  return n.slice(0, n.lastIndexOf("/")) || "/";
}
