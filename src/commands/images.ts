import path from "node:path";
import { PibakeError } from "../errors.js";
import { imageCacheLocation, lineOf, newestPerLine, pruneCache, readCache } from "../images/cache.js";
import { createOutput, formatBytes } from "../ui/output.js";

export interface ImagesOptions {
  all?: boolean;
}

/** pibake images list|prune [--all]: the cache of official Raspberry Pi OS images. */
export async function imagesCommand(action: string | undefined, opts: ImagesOptions): Promise<void> {
  const out = createOutput();
  const { dir } = imageCacheLocation();
  if (action === "list") {
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
    const total = contents.images.reduce((n, i) => n + i.downloadSize, 0) + contents.partials.reduce((n, p) => n + p.bytes, 0) + contents.broken.reduce((n, b) => n + b.bytes, 0);
    out.info(`total: ${formatBytes(total)}`);
  } else if (action === "prune") {
    const pruned = await pruneCache(dir, { all: opts.all === true });
    for (const r of pruned.removed) out.info(`removed ${r.what}: ${formatBytes(r.bytes)}`);
    for (const k of pruned.kept) out.info(`kept ${k.fileName} (the newest ${lineOf(k)})`);
    out.info(`freed ${formatBytes(pruned.freed)} in ${dir}`);
  } else {
    throw new PibakeError(`images needs an action: "list" or "prune"${action ? `, not "${action}"` : ""}`, 2);
  }
}
