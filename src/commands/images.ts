import path from "node:path";
import { withCleanup } from "../cleanup.js";
import { ARCHES, RELEASES, type Arch, type Release } from "../config/model.js";
import { PibakeError } from "../errors.js";
import { imageCacheLocation, lineOf, newestPerLine, pruneCache, readCache } from "../official/cache.js";
import { formatImageProgress, plainProgressPrinter, resolveOfficialImage, type ImageProgress } from "../official/index.js";
import { createOutput, formatBytes, type Output } from "../ui/output.js";

export interface ImagesOptions {
  all?: boolean;
  release?: string;
  arch?: string;
  date?: string;
  osList?: string;
}

/** pibake images list|prune|fetch: the cache of official Raspberry Pi OS images. */
export async function imagesCommand(action: string | undefined, opts: ImagesOptions): Promise<void> {
  const out = createOutput();
  const { dir } = imageCacheLocation();
  if (action !== "fetch") {
    const foreign = (["release", "arch", "date", "osList"] as const).find((k) => opts[k] !== undefined);
    if (foreign)
      throw new PibakeError(
        `--${foreign === "osList" ? "os-list" : foreign} goes with fetch: pibake images fetch --${foreign === "osList" ? "os-list" : foreign} …`,
        2,
      );
  }
  if (action === "fetch") {
    if (opts.all) throw new PibakeError("--all goes with prune: pibake images prune --all", 2);
    await fetchImage(opts, out);
  } else if (action === "list") {
    if (opts.all) throw new PibakeError("--all goes with prune: pibake images prune --all", 2);
    const contents = readCache(dir);
    if (contents.images.length === 0 && contents.partials.length === 0 && contents.broken.length === 0) {
      out.info(`no official images cached in ${dir}`);
      return;
    }
    out.info(`official images in ${dir}:`);
    const newest = newestPerLine(contents.images);
    for (const img of contents.images) {
      out.info(
        `  ${lineOf(img).padEnd(14)} ${img.releaseDate}  ${formatBytes(img.downloadSize).padStart(10)}  ${img.fileName}` +
          `${newest.has(img) ? "  (newest)" : ""}  verified ${img.verifiedAt.slice(0, 10)}`,
      );
    }
    for (const p of contents.partials) out.info(`  interrupted download: ${path.relative(dir, p.file)} (${formatBytes(p.bytes)}; the next build continues it)`);
    for (const b of contents.broken) out.info(`  not usable: ${path.relative(dir, b.dir)}: ${b.why} (${formatBytes(b.bytes)}; pibake images prune removes it)`);
    const total =
      contents.images.reduce((n, i) => n + i.downloadSize, 0) +
      contents.partials.reduce((n, p) => n + p.bytes, 0) +
      contents.broken.reduce((n, b) => n + b.bytes, 0);
    out.info(`total: ${formatBytes(total)}`);
  } else if (action === "prune") {
    const pruned = await pruneCache(dir, { all: opts.all === true });
    for (const r of pruned.removed) out.info(`removed ${r.what}: ${formatBytes(r.bytes)}`);
    for (const k of pruned.kept) out.info(`kept ${k.fileName} (the newest ${lineOf(k)})`);
    out.info(`freed ${formatBytes(pruned.freed)} in ${dir}`);
  } else {
    throw new PibakeError(`images needs an action: "list", "prune" or "fetch"${action ? `, not "${action}"` : ""}`, 2);
  }
}

/**
 * The official image a build would download, fetched and verified into the
 * cache ahead of the build: no root needed, and a build then starts from the cache.
 */
async function fetchImage(opts: ImagesOptions, out: Output): Promise<void> {
  const release = String(opts.release ?? "trixie") as Release;
  const arch = String(opts.arch ?? "arm64") as Arch;
  if (!RELEASES.includes(release)) throw new PibakeError(`--release ${release}: use ${RELEASES.join(" or ")}`, 2);
  if (!ARCHES.includes(arch)) throw new PibakeError(`--arch ${arch}: use ${ARCHES.join(" or ")}`, 2);
  const show = out.live ? (p: ImageProgress) => out.status(formatImageProgress(p)) : plainProgressPrinter((line) => out.status(line));
  // A scope, so that Ctrl-C or a crash stops the download and the lock is released (src/cleanup.ts).
  const got = await withCleanup((scope) =>
    resolveOfficialImage({
      release,
      arch,
      date: opts.date === undefined ? undefined : String(opts.date),
      listUrl: opts.osList,
      signal: scope.signal,
      onProgress: show,
      onStatus: (m) => out.status(m),
    }),
  );
  out.info(
    `${got.entry.fileName} (${lineOf(got.entry)} ${got.entry.releaseDate}), sha256 ${got.entry.downloadSha256}, ${got.fromCache ? "already in the cache" : "downloaded and verified"}: ${got.path}`,
  );
}
