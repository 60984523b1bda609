/**
 * A root file system that pibake reads and writes from the build host: an
 * image's mounted root partition. A base image is input from someone else, so
 * its symbolic links must never lead a host-side access out of it: an
 * absolute link such as `/etc/default -> /srv/x`, or a relative one that
 * climbs with `../../..`, followed by the host would reach the host's own
 * /srv/x or /etc/shadow, as root.
 *
 * Every path is resolved here as the kernel resolves it inside a chroot of
 * the image: absolute link targets start again at the image's root, and `..`
 * at that root stays there. So no link can leave the image; the file lands
 * where the image's own tools would put it. A chain of more than 40 links
 * (the kernel's limit, ELOOP) and a path through a file that is not a
 * directory are refused, naming the path and the link. The host path handed
 * to fs calls then holds no symbolic link below the root, and the last
 * component is opened with O_NOFOLLOW.
 *
 * Nothing else may change the tree while pibake works on it (the chroot's
 * processes run in between these calls, never during one).
 */
import {
  closeSync,
  constants,
  fchmodSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  renameSync,
  rmSync,
  statfsSync,
  symlinkSync,
  writeSync,
  type Dirent,
  type Stats,
} from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";

/** Linux's MAXSYMLINKS: more links than this in one lookup is ELOOP. */
const MAX_LINKS = 40;

export class ImageRoot {
  /** `dir` is the host directory that is the image's `/`. */
  constructor(readonly dir: string) {}

  /** The host path of `p` (a path inside the image, with or without a leading slash), every link resolved inside the image. */
  path(p: string): string {
    return this.resolve(p, true);
  }

  /** The same, except that a link in the last component is the link itself: for removing, renaming or replacing it. */
  linkPath(p: string): string {
    return this.resolve(p, false);
  }

  lstat(p: string): Stats | undefined {
    return lstatOrUndefined(this.linkPath(p));
  }

  /** The file's own status, through the image's links. */
  stat(p: string): Stats | undefined {
    return lstatOrUndefined(this.path(p));
  }

  exists(p: string): boolean {
    return lstatOrUndefined(this.path(p)) !== undefined;
  }

  isDirectory(p: string): boolean {
    return lstatOrUndefined(this.path(p))?.isDirectory() === true;
  }

  /** A file's bytes, read through the image's links; undefined when there is none. */
  read(p: string): Buffer | undefined {
    return this.withFile(p, (fd) => readFileSync(fd));
  }

  readText(p: string): string | undefined {
    return this.read(p)?.toString("utf8");
  }

  /** The first `n` bytes of a file (an ELF header, say: not the whole program). */
  head(p: string, n: number): Buffer | undefined {
    return this.withFile(p, (fd) => {
      const buf = Buffer.alloc(n);
      return buf.subarray(0, readSync(fd, buf, 0, n, 0));
    });
  }

  /** A directory's entries (none when it is absent). */
  list(p: string): string[] {
    return this.listEntries(p).map((e) => e.name);
  }

  listEntries(p: string): Dirent[] {
    const host = this.path(p);
    return lstatOrUndefined(host)?.isDirectory() ? readdirSync(host, { withFileTypes: true }) : [];
  }

  /** `use` with the file open for reading (the last component never followed on the host); undefined when there is none. */
  private withFile<T>(p: string, use: (fd: number) => T): T | undefined {
    let fd: number;
    try {
      fd = openSync(this.path(p), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
    try {
      return use(fd);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Write a file where the image's tools would: through a link in the last
   * component to its target inside the image, creating missing directories
   * (mode 0755) inside the image. The file gets `mode`.
   */
  write(p: string, content: string | Buffer, mode = 0o644): void {
    const host = this.path(p);
    this.makeParents(host);
    const fd = openSync(host, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, mode);
    try {
      const bytes = typeof content === "string" ? Buffer.from(content) : content;
      for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off, bytes.length - off);
      fchmodSync(fd, mode);
    } finally {
      closeSync(fd);
    }
  }

  /** Put a new regular file at `p`, replacing whatever is there (a link itself, not its target). */
  replace(p: string, content: string | Buffer, mode = 0o644): void {
    const host = this.linkPath(p);
    if (lstatOrUndefined(host)?.isDirectory()) throw new PibakeError(`in the image, /${clean(p)} is a directory where pibake writes a file`, 2);
    rmSync(host, { force: true });
    this.write(p, content, mode);
  }

  /** Remove `p` (a link is removed, not followed; `recursive` for directories, whose own links are never followed either). */
  remove(p: string, opts: { recursive?: boolean } = {}): void {
    rmSync(this.linkPath(p), { force: true, recursive: opts.recursive === true });
  }

  /** Make a directory and its missing parents inside the image; returns its host path. */
  mkdir(p: string, mode = 0o755): string {
    const host = this.path(p);
    this.makeParents(host);
    if (!lstatOrUndefined(host)) mkdirSync(host, { mode });
    if (!lstatOrUndefined(host)?.isDirectory()) throw new PibakeError(`in the image, /${clean(p)} is not a directory`, 2);
    return host;
  }

  /** A symbolic link at `p` (replacing what is there) pointing at `target`, which is stored as given: it is the image's business. */
  symlink(p: string, target: string): void {
    const host = this.linkPath(p);
    this.makeParents(host);
    rmSync(host, { force: true });
    symlinkSync(target, host);
  }

  rename(from: string, to: string): void {
    const dest = this.linkPath(to);
    this.makeParents(dest);
    renameSync(this.linkPath(from), dest);
  }

  /** Free bytes for root in the file system that holds the image's root. */
  freeBytes(): number {
    const st = statfsSync(this.dir);
    return Number(st.bavail) * Number(st.bsize);
  }

  /** Create the parents of a resolved host path, one level at a time (each resolved path below the root holds no link). */
  private makeParents(host: string): void {
    const rel = path.relative(this.dir, path.dirname(host));
    if (rel === "") return;
    let cur = this.dir;
    for (const part of rel.split(path.sep)) {
      cur = path.join(cur, part);
      const st = lstatOrUndefined(cur);
      if (!st) mkdirSync(cur, { mode: 0o755 });
      else if (!st.isDirectory()) throw new PibakeError(`in the image, /${path.relative(this.dir, cur)} is not a directory`, 2);
    }
  }

  /** Walk `p` one component at a time as a chroot would. */
  private resolve(p: string, followLast: boolean): string {
    const done: string[] = [];
    let rest = split(p);
    let links = 0;
    const chain: string[] = [];
    while (rest.length > 0) {
      const name = rest.shift()!;
      if (name === ".") continue;
      if (name === "..") {
        done.pop();
        continue;
      }
      const host = path.join(this.dir, ...done, name);
      const st = lstatOrUndefined(host);
      if (st?.isSymbolicLink() && (rest.length > 0 || followLast)) {
        const target = readlinkSync(host);
        chain.push(`/${[...done, name].join("/")} -> ${target}`);
        if (++links > MAX_LINKS) {
          throw new PibakeError(
            `the image's links do not end at a file for /${clean(p)} (more than ${MAX_LINKS} links: ${chain.slice(0, 3).join(", ")}, …): fix or remove ${chain[0]!.split(" -> ")[0]} in the base image`,
            2,
          );
        }
        if (target.startsWith("/")) done.length = 0;
        rest = [...split(target), ...rest];
        continue;
      }
      if (st && !st.isDirectory() && !st.isSymbolicLink() && rest.some((r) => r !== "." && r !== "..")) {
        throw new PibakeError(
          `in the image, /${[...done, name].join("/")} is not a directory, but pibake needs /${clean(p)}${chain.length ? ` (through ${chain.join(", ")})` : ""}`,
          2,
        );
      }
      done.push(name);
    }
    return path.join(this.dir, ...done);
  }
}

function split(p: string): string[] {
  return p.split("/").filter((s) => s !== "");
}

function clean(p: string): string {
  return split(p).join("/");
}

function lstatOrUndefined(host: string): Stats | undefined {
  try {
    return lstatSync(host);
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}
