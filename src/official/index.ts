/**
 * The official Raspberry Pi OS Lite image for a build: chosen from the OS
 * list Raspberry Pi Imager reads, downloaded (resumably), verified against
 * the list's digests, and kept in the cache; from the cache without any
 * request when the list cannot be read, or when the date is pinned and
 * that image is already here.
 */
import { promises as fsp, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import type { Arch, Release } from "../config/model.js";
import { PibakeError } from "../errors.js";
import { giveTo } from "../host/sudo.js";
import { pidAlive } from "../host/process.js";
import { writeFileAtomic } from "../host/files.js";
import {
  ensureDir,
  imageCacheLocation,
  PARTIAL_DIR,
  readCache,
  SAVED_LIST,
  writeRecord,
  type CachedImage,
  type CachedImageRecord,
  type CacheLocation,
} from "./cache.js";
import { downloadToPart } from "./download.js";
import { createHttpClient, DEFAULT_TIMEOUTS, getText, type HttpClient, type HttpTimeouts } from "./http.js";
import {
  chooseImage,
  DEFAULT_OS_LIST_URL,
  describeWanted,
  matchesWanted,
  parseOsList,
  type ImageWanted,
  type OsImageEntry,
  type ParsedOsList,
} from "./os-list.js";
import type { ImageProgress } from "./progress.js";
import { extractedDigest, sha256File } from "./verify.js";

export { DEFAULT_OS_LIST_URL } from "./os-list.js";
export { formatImageProgress, plainProgressPrinter, type ImageProgress } from "./progress.js";

export interface ResolveImageOptions {
  release: Release;
  arch: Arch;
  /** A release date, YYYY-MM-DD, to pin; the newest when absent. */
  date?: string | undefined;
  /** The OS list; default PIBAKE_OS_LIST_URL, else Raspberry Pi's own. */
  listUrl?: string | undefined;
  /** The cache directory; default $XDG_CACHE_HOME/pibake/images (the sudo user's under sudo). */
  cacheDir?: string | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: ImageProgress) => void) | undefined;
  /** One-line messages: what is happening, and why the cache is used. */
  onStatus?: ((message: string) => void) | undefined;
  /** The environment to read (proxies, PIBAKE_OFFLINE, PIBAKE_OS_LIST_URL, XDG_CACHE_HOME); default process.env. */
  env?: NodeJS.ProcessEnv | undefined;
  timeouts?: HttpTimeouts | undefined;
}

/** What a build records about the official image it came from. */
export interface OfficialImage {
  /** The verified .img.xz in the cache, for the base engine. */
  path: string;
  /** What the cache's record says of it: the list's entry, as downloaded and measured. */
  entry: CachedImageRecord;
  /** True when nothing was downloaded. */
  fromCache: boolean;
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;

/** The record alone, without where the cache keeps the file. */
function recordOf({ path: _path, dir: _dir, ...record }: CachedImage): CachedImageRecord {
  return record;
}

export function listUrlOf(opts: { listUrl?: string | undefined }, env: NodeJS.ProcessEnv): string {
  return opts.listUrl || env.PIBAKE_OS_LIST_URL || DEFAULT_OS_LIST_URL;
}

export async function resolveOfficialImage(opts: ResolveImageOptions): Promise<OfficialImage> {
  const env = opts.env ?? process.env;
  if (opts.date !== undefined && !DATE.test(opts.date))
    throw new PibakeError(`the release date to pin must be YYYY-MM-DD, not ${JSON.stringify(opts.date)}`, 2);
  const wanted: ImageWanted = { release: opts.release, arch: opts.arch, ...(opts.date ? { date: opts.date } : {}) };
  const loc: CacheLocation = opts.cacheDir ? { dir: path.resolve(opts.cacheDir) } : imageCacheLocation(env);
  const listUrl = listUrlOf(opts, env);
  const status = opts.onStatus ?? (() => {});

  // A pinned release never changes: when it is here, nothing needs asking.
  if (wanted.date) {
    const pinned = readCache(loc.dir).images.find((c) => matchesWanted(c, wanted));
    if (pinned) {
      const ok = await stillWhole(pinned, opts);
      if (ok) return { path: ok.path, entry: recordOf(ok), fromCache: true };
    }
  }

  const client = createHttpClient(env, opts.timeouts ?? DEFAULT_TIMEOUTS);
  try {
    let chosen: OsImageEntry | undefined;
    const list = await readList(client, listUrl, env, opts.signal, status);
    const listProblem = list.problem;
    if (list.parsed) {
      chosen = chooseImage(list.parsed, wanted, listUrl);
      await ensureDir(loc, loc.dir);
      await writeFileAtomic(path.join(loc.dir, SAVED_LIST), list.text).catch(() => {});
      giveTo(path.join(loc.dir, SAVED_LIST), loc.owner);
    }

    if (chosen) {
      const cached = readCache(loc.dir).images.find((c) => sameImage(c, chosen!));
      if (cached) {
        const ok = await stillWhole(cached, opts);
        if (ok) return { path: ok.path, entry: recordOf(ok), fromCache: true };
      }
      return await downloadAndVerify(chosen, { ...opts, listUrl }, loc, client);
    }

    // No list: the newest cached image that fits, without any request.
    const fallback = readCache(loc.dir).images.find((c) => matchesWanted(c, wanted));
    if (fallback) {
      status(`cannot read the OS list ${listUrl} (${listProblem}): using the cached ${fallback.fileName}, verified ${fallback.verifiedAt.slice(0, 10)}`);
      const ok = await stillWhole(fallback, opts);
      if (ok) return { path: ok.path, entry: recordOf(ok), fromCache: true };
    }
    const knownUrl = knownImageUrl(loc.dir, wanted);
    throw new PibakeError(
      `cannot read the OS list ${listUrl} (${listProblem}), and no Raspberry Pi OS Lite image for ${describeWanted(wanted)} is in the cache (${loc.dir}).\n` +
        (knownUrl
          ? `Download ${knownUrl} by hand`
          : `Download Raspberry Pi OS Lite (${describeWanted(wanted)}) by hand from https://www.raspberrypi.com/software/operating-systems/`) +
        ` and pass it with --base FILE, or run again when the list can be reached.`,
    );
  } finally {
    await client.close().catch(() => {});
  }
}

/** The OS list, read and parsed; or why it was not (PIBAKE_OFFLINE=1, the network, not Imager's format). */
async function readList(
  client: HttpClient,
  listUrl: string,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal | undefined,
  status: (message: string) => void,
  totalMs?: number,
): Promise<{ text: string; parsed: ParsedOsList; problem?: undefined } | { text?: undefined; parsed?: undefined; problem: string }> {
  if (env.PIBAKE_OFFLINE === "1") return { problem: "PIBAKE_OFFLINE=1" };
  let text: string;
  try {
    status(`reading the OS list ${listUrl}`);
    text = await getText(client, listUrl, signal, totalMs);
  } catch (err) {
    if (signal?.aborted) throw err;
    return { problem: (err as Error).message };
  }
  try {
    return { text, parsed: parseOsList(text, listUrl) };
  } catch (err) {
    return { problem: (err as Error).message };
  }
}

/** What a build would do for its official image, found without downloading, hashing or writing anything. */
export interface OfficialImagePlan {
  listUrl: string;
  cacheDir: string;
  /** The list's entry the build would take, when the list was read. */
  entry?: OsImageEntry;
  /** The cached image the build would use: the list's entry, a pinned release, or with no list the newest that fits. */
  cached?: CachedImageRecord;
  /** Why the list was not asked or not read; the build then uses the cache, or cannot start. */
  listProblem?: string;
  /** The list has no image for the config: the build cannot start. */
  unavailable?: string;
}

/** How long a dry run waits for the OS list, in all: a plan should not hang on a dead network. */
export const PLAN_LIST_TIMEOUTS: HttpTimeouts = { connectMs: 10_000, headersMs: 10_000, idleMs: 10_000 };
const PLAN_LIST_TOTAL_MS = 15_000;

/**
 * resolveOfficialImage's choice, without its work: the cache is read (its
 * records and sizes, no digests) and, unless a pinned release is cached,
 * the list is asked once with a bounded wait and not saved.
 */
export async function planOfficialImage(opts: Omit<ResolveImageOptions, "onProgress">): Promise<OfficialImagePlan> {
  const env = opts.env ?? process.env;
  if (opts.date !== undefined && !DATE.test(opts.date))
    throw new PibakeError(`the release date to pin must be YYYY-MM-DD, not ${JSON.stringify(opts.date)}`, 2);
  const wanted: ImageWanted = { release: opts.release, arch: opts.arch, ...(opts.date ? { date: opts.date } : {}) };
  const dir = opts.cacheDir ? path.resolve(opts.cacheDir) : imageCacheLocation(env).dir;
  const listUrl = listUrlOf(opts, env);
  const cache = readCache(dir).images;
  const plan: OfficialImagePlan = { listUrl, cacheDir: dir };
  const fitting = cache.find((c) => matchesWanted(c, wanted));
  if (wanted.date && fitting) return { ...plan, cached: recordOf(fitting) };

  const client = createHttpClient(env, opts.timeouts ?? PLAN_LIST_TIMEOUTS);
  try {
    const list = await readList(client, listUrl, env, opts.signal, opts.onStatus ?? (() => {}), PLAN_LIST_TOTAL_MS);
    if (!list.parsed) return { ...plan, listProblem: list.problem, ...(fitting ? { cached: recordOf(fitting) } : {}) };
    let entry: OsImageEntry;
    try {
      entry = chooseImage(list.parsed, wanted, listUrl);
    } catch (err) {
      return { ...plan, unavailable: (err as Error).message };
    }
    const cached = cache.find((c) => sameImage(c, entry));
    return { ...plan, entry, ...(cached ? { cached: recordOf(cached) } : {}) };
  } finally {
    await client.close().catch(() => {});
  }
}

/** A cached image is the list's entry when the digests agree (and the URL, when the list gives no download digest). */
function sameImage(c: CachedImageRecord, e: OsImageEntry): boolean {
  if (c.extractSha256 !== e.extractSha256) return false;
  return e.downloadSha256 ? c.downloadSha256 === e.downloadSha256 : c.url === e.url;
}

/** The cached file still has the digest it was verified with; a spoiled entry is removed. */
async function stillWhole(c: CachedImage, opts: ResolveImageOptions): Promise<CachedImage | undefined> {
  opts.onStatus?.(`using the cached ${c.fileName} (${c.release}/${c.arch}, released ${c.releaseDate})`);
  const now = await sha256File(c.path, { signal: opts.signal, onProgress: opts.onProgress, fileName: c.fileName, total: c.downloadSize });
  if (now.sha256 === c.downloadSha256) return c;
  opts.onStatus?.(`the cached ${c.path} has changed since it was verified (SHA-256 ${now.sha256}, was ${c.downloadSha256}): removing it`);
  await fsp.rm(c.dir, { recursive: true, force: true });
  return undefined;
}

/** The image URL a user could fetch by hand: from the last list read, else from an interrupted download. */
function knownImageUrl(dir: string, wanted: ImageWanted): string | undefined {
  try {
    const list = parseOsList(readFileSync(path.join(dir, SAVED_LIST), "utf8"), SAVED_LIST);
    return chooseImage(list, wanted, SAVED_LIST).url;
  } catch {
    // No saved list, or nothing fitting in it.
  }
  try {
    for (const f of readdirSync(path.join(dir, PARTIAL_DIR))) {
      if (!f.endsWith(".part.json")) continue;
      const p = JSON.parse(readFileSync(path.join(dir, PARTIAL_DIR, f), "utf8")) as { url?: string; release?: string; arch?: string; releaseDate?: string };
      if (typeof p.url === "string" && matchesWanted({ release: p.release ?? "", arch: p.arch ?? "", releaseDate: p.releaseDate ?? "" }, wanted)) return p.url;
    }
  } catch {
    // No partial downloads.
  }
  return undefined;
}

interface PartRecord {
  url: string;
  release: string;
  arch: string;
  releaseDate: string;
  downloadSha256: string | null;
  extractSha256: string;
}

async function readPartRecord(file: string): Promise<PartRecord | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, "utf8")) as PartRecord;
  } catch {
    return undefined;
  }
}

async function downloadAndVerify(
  e: OsImageEntry,
  opts: ResolveImageOptions & { listUrl: string },
  loc: CacheLocation,
  client: HttpClient,
): Promise<OfficialImage> {
  const partialDir = path.join(loc.dir, PARTIAL_DIR);
  await ensureDir(loc, partialDir);
  const partFile = path.join(partialDir, `${e.fileName}.part`);
  const release = await lockDownload(`${partFile}.lock`, e.fileName);
  try {
    return await downloadLocked(e, opts, loc, client, partFile);
  } finally {
    await release();
  }
}

/**
 * One download of a file at a time: two builds writing the same .part would
 * spoil it. The lock file holds the owner's pid; a lock whose process is gone
 * (a crash, a kill -9) is taken over.
 */
async function lockDownload(lockFile: string, fileName: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await fsp.open(lockFile, "wx", 0o644);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => fsp.rm(lockFile, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const pid = Number(await fsp.readFile(lockFile, "utf8").catch(() => ""));
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && pidAlive(pid)) {
      throw new PibakeError(`another pibake (pid ${pid}) is downloading ${fileName}: wait for it to finish, then run again`);
    }
    await fsp.rm(lockFile, { force: true });
  }
  throw new PibakeError(`cannot take the download lock ${lockFile}`);
}

/**
 * One download of an official image into the cache, under its lock: the
 * part file, then its checks, then its own name. The steps run in order,
 * each a function of this record.
 */
interface ImageDownload {
  readonly e: OsImageEntry;
  readonly opts: ResolveImageOptions & { listUrl: string };
  readonly loc: CacheLocation;
  readonly client: HttpClient;
  readonly partFile: string;
  /** What the part file is a download of, beside it. */
  readonly partRecordFile: string;
  readonly status: (message: string) => void;
  /** The downloaded file's digest and size, then the image's inside it. */
  got?: { sha256: string; size: number };
  inner?: { sha256: string; size: number };
}

async function downloadLocked(
  e: OsImageEntry,
  opts: ResolveImageOptions & { listUrl: string },
  loc: CacheLocation,
  client: HttpClient,
  partFile: string,
): Promise<OfficialImage> {
  const d: ImageDownload = { e, opts, loc, client, partFile, partRecordFile: `${partFile}.json`, status: opts.onStatus ?? (() => {}) };
  await claimPart(d);
  await fetchPart(d);
  await checkDownload(d);
  await checkExtracted(d);
  return keepVerified(d);
}

/** The part file continues only a download of this very image: another one's is removed, and the record says whose it is now. */
async function claimPart(d: ImageDownload): Promise<void> {
  const { e } = d;
  const want: PartRecord = {
    url: e.url,
    release: e.release,
    arch: e.arch,
    releaseDate: e.releaseDate,
    downloadSha256: e.downloadSha256 ?? null,
    extractSha256: e.extractSha256,
  };
  const had = await readPartRecord(d.partRecordFile);
  if (JSON.stringify(had) !== JSON.stringify(want)) {
    // A partial file of another image (or of unknown origin) cannot be continued.
    await fsp.rm(d.partFile, { force: true });
    await writeFileAtomic(d.partRecordFile, JSON.stringify(want, null, 2) + "\n");
    giveTo(d.partRecordFile, d.loc.owner);
  }
}

async function discardPart(d: ImageDownload): Promise<void> {
  await fsp.rm(d.partFile, { force: true });
  await fsp.rm(d.partRecordFile, { force: true });
}

/** The whole file in the part file: downloaded or continued, or only hashed when the last run had it all. */
async function fetchPart(d: ImageDownload): Promise<void> {
  const { e, opts, partFile, status } = d;
  const existing = await fsp.stat(partFile).then(
    (s) => s.size,
    () => 0,
  );
  if (e.downloadSize !== undefined && existing === e.downloadSize) {
    status(`${e.fileName} was downloaded before the last run stopped: checking it`);
    d.got = await sha256File(partFile, { signal: opts.signal, onProgress: opts.onProgress, fileName: e.fileName, total: existing });
  } else {
    status(existing > 0 ? `continuing the download of ${e.url} at ${existing} bytes` : `downloading ${e.url}`);
    d.got = await downloadToPart({
      url: e.url,
      partFile,
      fileName: e.fileName,
      ...(e.downloadSize !== undefined ? { expectedSize: e.downloadSize } : {}),
      client: d.client,
      signal: opts.signal,
      onProgress: opts.onProgress,
      onStatus: status,
    });
  }
  giveTo(partFile, d.loc.owner);
}

/** The download is as long as the list says (else it is kept, to continue), and its digest the list's (else it is deleted). */
async function checkDownload(d: ImageDownload): Promise<void> {
  const { e } = d;
  const got = d.got!;
  if (e.downloadSize !== undefined && got.size < e.downloadSize) {
    throw new PibakeError(`the download of ${e.url} ended after ${got.size} of ${e.downloadSize} bytes; run again to continue from ${d.partFile}`);
  }
  if (e.downloadSha256 && got.sha256 !== e.downloadSha256) {
    await discardPart(d);
    throw new PibakeError(
      `the download of ${e.url} is not the file the OS list describes: its SHA-256 is ${got.sha256}, the list (${d.opts.listUrl}) says ${e.downloadSha256}. ` +
        `The download was deleted; run again to fetch it anew.`,
    );
  }
}

/** The image inside the download, decompressed to a digest: it must be the list's extract_sha256 and size. */
async function checkExtracted(d: ImageDownload): Promise<void> {
  const { e, opts } = d;
  d.status(`checking the image inside ${e.fileName} against the list's extract_sha256`);
  let inner;
  try {
    inner = await extractedDigest(d.partFile, { signal: opts.signal, onProgress: opts.onProgress, fileName: e.fileName, total: e.extractSize });
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    await discardPart(d);
    throw new PibakeError(`the download of ${e.url} cannot be decompressed (${(err as Error).message}); it was deleted, run again to fetch it anew`);
  }
  if (inner.sha256 !== e.extractSha256 || (e.extractSize !== undefined && inner.size !== e.extractSize)) {
    await discardPart(d);
    throw new PibakeError(
      `the image inside ${e.url} is not the one the OS list describes: its SHA-256 is ${inner.sha256} (${inner.size} bytes), ` +
        `the list (${opts.listUrl}) says ${e.extractSha256}${e.extractSize !== undefined ? ` (${e.extractSize} bytes)` : ""}. The download was deleted; run again to fetch it anew.`,
    );
  }
  d.inner = inner;
}

/** Verified: only now does the file take its own name, in a directory named by its digest, with its record. */
async function keepVerified(d: ImageDownload): Promise<OfficialImage> {
  const { e, loc } = d;
  const got = d.got!;
  const inner = d.inner!;
  const dir = path.join(loc.dir, got.sha256);
  await ensureDir(loc, dir);
  const file = path.join(dir, e.fileName);
  await fsp.rename(d.partFile, file);
  await fsp.rm(d.partRecordFile, { force: true });
  const record: CachedImageRecord = {
    name: e.name,
    fileName: e.fileName,
    release: e.release,
    arch: e.arch,
    releaseDate: e.releaseDate,
    url: e.url,
    downloadSha256: got.sha256,
    downloadSize: got.size,
    extractSha256: inner.sha256,
    extractSize: inner.size,
    verifiedAt: new Date().toISOString(),
    listUrl: d.opts.listUrl,
  };
  await writeRecord(loc, dir, record);
  d.status(`verified ${e.fileName} and kept it in ${dir}`);
  return { path: file, entry: record, fromCache: false };
}
