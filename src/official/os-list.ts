/**
 * The OS list that Raspberry Pi Imager reads (os_list_imagingutility_v4.json):
 * a top-level `os_list` of entries, each either an image (`url`, sizes,
 * digests, `release_date`, `devices`, `init_format`), a category with inline
 * `subitems`, or a category whose items live in another file (`subitems_url`).
 *
 * Raspberry Pi OS Lite sits inline: the current release under "Raspberry Pi
 * OS (other)" as "Raspberry Pi OS Lite (64-bit)" / "(32-bit)", the previous one
 * as "Raspberry Pi OS (Legacy, 64-bit) Lite" / "(Legacy, 32-bit) Lite".
 * `subitems_url` categories are other vendors' systems and bootloader
 * restore images on other hosts, so they are not followed: following them
 * would cost a request per vendor and could not yield an official image.
 *
 * The list is large and mostly other vendors' entries; only entries that are
 * Raspberry Pi OS Lite images are checked field by field, so one odd entry
 * elsewhere cannot stop a build.
 */
import type { Arch, Release } from "../config/model.js";
import { PibakeError } from "../errors.js";

export const DEFAULT_OS_LIST_URL = "https://downloads.raspberrypi.com/os_list_imagingutility_v4.json";

/** A Raspberry Pi OS Lite image as the list describes it, with what its file name says. */
export interface OsImageEntry {
  /** Where in the list it sits, e.g. `os_list[2].subitems[3]`, for messages. */
  where: string;
  name: string;
  description: string;
  url: string;
  /** The download's file name, e.g. 2025-12-04-raspios-trixie-arm64-lite.img.xz. */
  fileName: string;
  /** The list's release_date, YYYY-MM-DD. */
  releaseDate: string;
  /** The date that begins the file name: normally the release date, occasionally a day off. */
  fileDate: string;
  /** The Debian release named in the file name (trixie, bookworm, or an older one). */
  release: string;
  arch: Arch;
  /** SHA-256 of the download (the .img.xz); optional in Imager's schema. */
  downloadSha256?: string;
  downloadSize?: number;
  /** SHA-256 and size of the decompressed image. */
  extractSha256: string;
  extractSize?: number;
  initFormat?: string;
  devices: string[];
}

/**
 * The rule that recognises a Raspberry Pi OS Lite image and its release and
 * architecture: the last segment of its URL, as Raspberry Pi names every
 * release, `DATE-raspios-RELEASE-ARCH-lite.img.COMPRESSION`
 * (…/raspios_lite_arm64/images/raspios_lite_arm64-2025-12-04/2025-12-04-raspios-trixie-arm64-lite.img.xz,
 * …/raspios_oldstable_lite_armhf/…/2025-12-04-raspios-bookworm-armhf-lite.img.xz).
 * The display names do not say the Debian release ("Legacy" means the
 * previous one, whichever that is), so they are not used.
 */
const LITE_FILE = /^(\d{4}-\d{2}-\d{2})-raspios-([a-z]+)-(arm64|armhf)-lite\.img\.(xz|gz|zst|zip)$/;

export interface ParsedOsList {
  /** Every Raspberry Pi OS Lite image in the list, in list order, each URL once. */
  images: OsImageEntry[];
  /** Categories with `subitems_url` that were not followed, for messages. */
  skippedSublists: number;
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const SHA256 = /^[0-9a-fA-F]{64}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The URL's last path segment, or undefined when it is not an http(s) URL. */
export function urlFileName(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") return undefined;
  const last = u.pathname.split("/").pop();
  return last ? decodeURIComponent(last) : undefined;
}

/** What the file name says, for an image URL; undefined for anything that is not Raspberry Pi OS Lite. */
export function recogniseLite(url: string): { fileName: string; fileDate: string; release: string; arch: Arch } | undefined {
  const fileName = urlFileName(url);
  const m = fileName ? LITE_FILE.exec(fileName) : null;
  if (!fileName || !m) return undefined;
  return { fileName, fileDate: m[1]!, release: m[2]!, arch: m[3] as Arch };
}

function problem(source: string, where: string, what: string): PibakeError {
  return new PibakeError(`the OS list from ${source} is not in Raspberry Pi Imager's format: ${where}: ${what}`);
}

function entryOf(obj: Record<string, unknown>, where: string, source: string): OsImageEntry | undefined {
  if (typeof obj.url !== "string") return undefined;
  const lite = recogniseLite(obj.url);
  if (!lite) return undefined;
  const str = (key: string): string => {
    const v = obj[key];
    if (typeof v !== "string") throw problem(source, `${where}.${key}`, v === undefined ? "missing" : `${JSON.stringify(v)} is not a string`);
    return v;
  };
  const size = (key: string): number | undefined => {
    const v = obj[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) throw problem(source, `${where}.${key}`, `${JSON.stringify(v)} is not a size in bytes`);
    return v;
  };
  const digest = (key: string, required: boolean): string | undefined => {
    const v = obj[key];
    if (v === undefined && !required) return undefined;
    if (typeof v !== "string" || !SHA256.test(v))
      throw problem(source, `${where}.${key}`, v === undefined ? "missing" : `${JSON.stringify(v)} is not a SHA-256 digest (64 hex digits)`);
    return v.toLowerCase();
  };
  const releaseDate = str("release_date");
  if (!DATE.test(releaseDate)) throw problem(source, `${where}.release_date`, `${JSON.stringify(releaseDate)} is not a date YYYY-MM-DD`);
  const devices = obj.devices;
  if (devices !== undefined && !(Array.isArray(devices) && devices.every((d) => typeof d === "string"))) {
    throw problem(source, `${where}.devices`, "is not a list of device names");
  }
  const downloadSha256 = digest("image_download_sha256", false);
  const downloadSize = size("image_download_size");
  const extractSize = size("extract_size");
  return {
    where,
    name: str("name"),
    description: typeof obj.description === "string" ? obj.description : "",
    url: obj.url,
    ...lite,
    releaseDate,
    ...(downloadSha256 !== undefined ? { downloadSha256 } : {}),
    ...(downloadSize !== undefined ? { downloadSize } : {}),
    extractSha256: digest("extract_sha256", true)!,
    ...(extractSize !== undefined ? { extractSize } : {}),
    ...(typeof obj.init_format === "string" ? { initFormat: obj.init_format } : {}),
    devices: (devices as string[] | undefined) ?? [],
  };
}

/** Imager stops descending after a few levels; so does this, so a cyclic or hostile list ends. */
const MAX_DEPTH = 8;

/** Parse the list's JSON text; `source` (its URL) names it in errors. */
export function parseOsList(text: string, source: string): ParsedOsList {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new PibakeError(`the OS list from ${source} is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw problem(source, "(top)", "is not an object");
  if (!Array.isArray(doc.os_list)) throw problem(source, "os_list", doc.os_list === undefined ? "missing" : "is not a list");
  const images: OsImageEntry[] = [];
  const seen = new Set<string>();
  let skippedSublists = 0;
  const walk = (items: unknown[], where: string, depth: number) => {
    items.forEach((item, i) => {
      const at = `${where}[${i}]`;
      if (!isObject(item)) throw problem(source, at, "is not an object");
      if (Array.isArray(item.subitems)) {
        if (depth < MAX_DEPTH) walk(item.subitems, `${at}.subitems`, depth + 1);
        return;
      }
      if (typeof item.subitems_url === "string") {
        skippedSublists++;
        return;
      }
      const entry = entryOf(item, at, source);
      if (entry && !seen.has(entry.url)) {
        seen.add(entry.url);
        images.push(entry);
      }
    });
  };
  walk(doc.os_list, "os_list", 0);
  return { images, skippedSublists };
}

export interface ImageWanted {
  release: Release;
  arch: Arch;
  /** A pinned release date, YYYY-MM-DD; newest when absent. */
  date?: string;
}

/** `trixie/arm64`, `trixie/arm64 2025-12-04`. */
export function describeWanted(w: ImageWanted): string {
  return `${w.release}/${w.arch}${w.date ? ` ${w.date}` : ""}`;
}

export function matchesWanted(e: { release: string; arch: string; releaseDate: string; fileDate?: string }, w: ImageWanted): boolean {
  if (e.release !== w.release || e.arch !== w.arch) return false;
  return w.date === undefined || e.releaseDate === w.date || e.fileDate === w.date;
}

/** Newest first by release date; the URL breaks ties so the choice is the same every time. */
export function newestFirst<T extends { releaseDate: string; url: string }>(a: T, b: T): number {
  return a.releaseDate === b.releaseDate ? (a.url < b.url ? 1 : a.url > b.url ? -1 : 0) : a.releaseDate < b.releaseDate ? 1 : -1;
}

/** What a list offers, as `release/arch date` triples, for messages. */
export function describeOffers(entries: { release: string; arch: string; releaseDate: string }[]): string {
  if (entries.length === 0) return "no Raspberry Pi OS Lite image";
  const triples = [...new Set(entries.map((e) => `${e.release}/${e.arch} ${e.releaseDate}`))].sort();
  return triples.join(", ");
}

/**
 * The Raspberry Pi OS Lite image for a release and architecture: the newest,
 * or the one released on the pinned date. An error names what the list offers.
 */
export function chooseImage(list: ParsedOsList, wanted: ImageWanted, source: string): OsImageEntry {
  const fits = list.images.filter((e) => matchesWanted(e, wanted)).sort(newestFirst);
  const chosen = fits[0];
  if (chosen) return chosen;
  throw new PibakeError(
    `the OS list from ${source} has no Raspberry Pi OS Lite image for ${describeWanted(wanted)}; it offers: ${describeOffers(list.images)}` +
      (wanted.date ? `. The list holds only current releases: an older one must be in the cache (pibake images list) or passed with --base FILE` : ""),
  );
}
