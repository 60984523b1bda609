/**
 * The cache of verified official images:
 *
 *   <dir>/<SHA-256 of the download>/<file name>   the .img.xz as downloaded, verified
 *   <dir>/<SHA-256 of the download>/image.json    what it is; written last, so a
 *                                                 directory without it is not an entry
 *   <dir>/partial/<file name>.part                a download under way or interrupted
 *   <dir>/partial/<file name>.part.json           the URL and digests it is for
 *   <dir>/os_list.json                            the last OS list read, for messages offline
 *
 * The compressed download is kept, not the decompressed image: a Lite image
 * is about 0.5 GiB as .img.xz and 3 GiB unpacked, and the base engine reads
 * .img.xz as a stream anyway. The price is that checking the image's own
 * digest (extract_sha256) decompresses it once, when it is downloaded.
 */
import { promises as fsp, readdirSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { writeFileAtomic } from "../host/files.js";
import { giveTo, homeOf, sudoInvoker } from "../host/sudo.js";
import { newestFirst } from "./os-list.js";

export { homeOf } from "../host/sudo.js";

export const SIDECAR = "image.json";
export const PARTIAL_DIR = "partial";
export const SAVED_LIST = "os_list.json";

/** What image.json holds. */
export interface CachedImageRecord {
  name: string;
  fileName: string;
  release: string;
  arch: string;
  releaseDate: string;
  url: string;
  /** SHA-256 of the file kept here (the download), measured. */
  downloadSha256: string;
  downloadSize: number;
  /** SHA-256 and size of the decompressed image, measured and equal to the list's. */
  extractSha256: string;
  extractSize: number;
  /** ISO time of the check. */
  verifiedAt: string;
  /** The OS list it was chosen from. */
  listUrl: string;
}

export interface CachedImage extends CachedImageRecord {
  /** The verified image file. */
  path: string;
  /** Its directory in the cache. */
  dir: string;
}

/** Who owns what the cache holds: the user who ran sudo, when pibake runs as root under sudo. */
export interface CacheOwner {
  uid: number;
  gid: number;
}

export interface CacheLocation {
  dir: string;
  /** Set when files must be handed to the user behind sudo. */
  owner?: CacheOwner;
}

/**
 * `$XDG_CACHE_HOME/pibake/images`, else `~/.cache/pibake/images`. Under sudo
 * (root, with SUDO_USER another user), `~` is that user's home and the files
 * are made theirs: the image is public data, `pibake images list|prune` run
 * without sudo must see and remove it, and a build with and one without sudo
 * should not download the same 0.5 GiB twice into two homes.
 */
export function imageCacheLocation(
  env: NodeJS.ProcessEnv = process.env,
  uid: number = process.getuid?.() ?? -1,
  lookupHome: (user: string) => string | undefined = homeOf,
): CacheLocation {
  const sudo = sudoInvoker(env, uid, lookupHome);
  const owner = sudo ? { uid: sudo.uid, gid: sudo.gid } : undefined;
  if (env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME)) {
    return { dir: path.join(env.XDG_CACHE_HOME, "pibake", "images"), ...(owner ? { owner } : {}) };
  }
  if (owner && sudo?.home) return { dir: path.join(sudo.home, ".cache", "pibake", "images"), owner };
  const home = env.HOME && path.isAbsolute(env.HOME) ? env.HOME : os.homedir();
  return { dir: path.join(home, ".cache", "pibake", "images") };
}

/** Create a directory (and its parents inside the cache) owned by the cache's owner. */
export async function ensureDir(loc: CacheLocation, dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  if (loc.owner) {
    // Hand over every directory from the cache's parent down, so the user can prune what root made.
    const base = path.dirname(path.dirname(loc.dir));
    for (let d = dir; d.startsWith(base) && d !== base; d = path.dirname(d)) giveTo(d, loc.owner);
  }
}

function isRecord(v: unknown): v is CachedImageRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  const strings = ["name", "fileName", "release", "arch", "releaseDate", "url", "downloadSha256", "extractSha256", "verifiedAt", "listUrl"];
  return strings.every((k) => typeof r[k] === "string") && typeof r.downloadSize === "number" && typeof r.extractSize === "number";
}

export interface CacheContents {
  images: CachedImage[];
  /** Directories that are not (or no longer) whole entries: a sidecar missing or unreadable, the image missing or of another size. */
  broken: { dir: string; why: string; bytes: number }[];
  /** Interrupted downloads. */
  partials: { file: string; bytes: number }[];
}

function sizeOf(p: string): number {
  try {
    const st = statSync(p);
    if (!st.isDirectory()) return st.size;
    return readdirSync(p).reduce((n, f) => n + sizeOf(path.join(p, f)), 0);
  } catch {
    return 0;
  }
}

/** Everything in the cache, newest first; reads sidecars and sizes, hashes nothing. */
export function readCache(dir: string): CacheContents {
  const out: CacheContents = { images: [], broken: [], partials: [] };
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    const sub = path.join(dir, name);
    if (name === PARTIAL_DIR) {
      for (const f of safeReaddir(sub)) if (f.endsWith(".part")) out.partials.push({ file: path.join(sub, f), bytes: sizeOf(path.join(sub, f)) });
      continue;
    }
    if (!/^[0-9a-f]{64}$/.test(name)) continue;
    let record: unknown;
    try {
      record = JSON.parse(readFileSync(path.join(sub, SIDECAR), "utf8"));
    } catch {
      out.broken.push({ dir: sub, why: `no readable ${SIDECAR} (an interrupted store)`, bytes: sizeOf(sub) });
      continue;
    }
    if (!isRecord(record) || record.downloadSha256 !== name || path.basename(record.fileName) !== record.fileName) {
      out.broken.push({ dir: sub, why: `${SIDECAR} does not describe this entry`, bytes: sizeOf(sub) });
      continue;
    }
    const file = path.join(sub, record.fileName);
    const size = sizeOf(file);
    if (size !== record.downloadSize) {
      out.broken.push({ dir: sub, why: `${record.fileName} is ${size} bytes, not ${record.downloadSize}`, bytes: sizeOf(sub) });
      continue;
    }
    out.images.push({ ...record, path: file, dir: sub });
  }
  out.images.sort((a, b) => newestFirst(a, b) || (a.verifiedAt < b.verifiedAt ? 1 : -1));
  return out;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** `release/arch`, the key under which one image is the newest. */
export function lineOf(img: { release: string; arch: string }): string {
  return `${img.release}/${img.arch}`;
}

/** The newest cached image of each release/arch. */
export function newestPerLine(images: CachedImage[]): Set<CachedImage> {
  const seen = new Map<string, CachedImage>();
  for (const img of [...images].sort(newestFirst)) if (!seen.has(lineOf(img))) seen.set(lineOf(img), img);
  return new Set(seen.values());
}

export async function writeRecord(loc: CacheLocation, dir: string, record: CachedImageRecord): Promise<void> {
  const file = path.join(dir, SIDECAR);
  await writeFileAtomic(file, JSON.stringify(record, null, 2) + "\n", 0o644);
  giveTo(file, loc.owner);
}

export interface Pruned {
  removed: { what: string; bytes: number }[];
  kept: CachedImage[];
  freed: number;
}

/**
 * Remove every cached image but the newest of each release/arch, and the
 * broken entries; with `all`, everything, interrupted downloads too.
 */
export async function pruneCache(dir: string, opts: { all: boolean }): Promise<Pruned> {
  const contents = readCache(dir);
  const keep = opts.all ? new Set<CachedImage>() : newestPerLine(contents.images);
  const removed: Pruned["removed"] = [];
  for (const img of contents.images) {
    if (keep.has(img)) continue;
    const bytes = sizeOf(img.dir);
    // The sidecar goes first: an entry half removed is then broken, never taken for whole.
    await fsp.rm(path.join(img.dir, SIDECAR), { force: true });
    await fsp.rm(img.dir, { recursive: true, force: true });
    removed.push({ what: `${img.fileName} (${lineOf(img)} ${img.releaseDate})`, bytes });
  }
  for (const b of contents.broken) {
    await fsp.rm(b.dir, { recursive: true, force: true });
    removed.push({ what: `${path.basename(b.dir)} (${b.why})`, bytes: b.bytes });
  }
  if (opts.all) {
    for (const p of contents.partials) {
      await fsp.rm(p.file, { force: true });
      await fsp.rm(`${p.file}.json`, { force: true });
      removed.push({ what: `${path.basename(p.file)} (an interrupted download)`, bytes: p.bytes });
    }
    await fsp.rm(path.join(dir, SAVED_LIST), { force: true });
  }
  return { removed, kept: contents.images.filter((i) => keep.has(i)), freed: removed.reduce((n, r) => n + r.bytes, 0) };
}
