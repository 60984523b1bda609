/**
 * Delivery, the same for every engine: from the engine's raw image to the
 * files in --out:
 *
 *   <name>-<domain>-<date>.img[.xz|.zst]   the image
 *   <that>.sha256                          sha256sum's format: `sha256sum -c` checks it
 *   <name>-<domain>-<date>.img.bmap        bmap-tools' block map of the raw image
 *   <name>-<domain>-<date>.manifest.json   what was built, from what, with which certificate
 *   <name>-<domain>-<date>.log             the build's log (secrets redacted)
 *   ca.crt                                 the CA that clients trust
 *
 * Everything is written under temporary names in --out and renamed into place
 * only when complete, the image last: a failure or Ctrl-C leaves no partial file.
 */
import { createHash } from "node:crypto";
import { createReadStream, promises as fsp, statSync } from "node:fs";
import path from "node:path";
import { withCleanup } from "../cleanup.js";
import { PIBAKE_VERSION } from "../version.js";
import { formatBytes } from "../ui/output.js";
import { readBmap, serializeBmap, type Bmap } from "./bmap.js";
import { writeFileAtomic } from "../host/files.js";
import { giveTo, mkdirOwned } from "../host/sudo.js";
import { scanImage } from "./sparse.js";
import { startCompressor } from "./compressor.js";
import { tempName } from "./temp-files.js";

export { pidAlive, removeStaleTemps } from "./temp-files.js";
import type { EngineResult } from "./types.js";
import { runCommand } from "../host/process.js";
import { sparseCopy } from "./commands.js";

export type DeliverCompression = "xz" | "zstd" | "none";
export const COMPRESSIONS: readonly DeliverCompression[] = ["xz", "zstd", "none"];
const SUFFIX: Record<DeliverCompression, string> = { xz: ".xz", zstd: ".zst", none: "" };

export type DeliverPhase = "bmap" | "compress" | "checksum" | "manifest";

export interface DeliverInput {
  result: EngineResult;
  outDir: string;
  /** `<name>-<domain>-<date>`: every delivered file's name starts with it. */
  baseName: string;
  compress: DeliverCompression;
  /** The build's log so far; copied beside the image. */
  logPath: string;
  signal?: AbortSignal;
  /** What the manifest says about the build beyond the image (config digests, certificates), as given. */
  facts: Record<string, unknown>;
  /** Small files delivered beside the image (the CA certificate), listed in the manifest with their digests. */
  extraFiles: { name: string; content: string }[];
  /** Timings of the steps before delivery (render, the engine's), for the manifest. */
  timings?: Record<string, number>;
  onStatus?: (phase: DeliverPhase, message: string) => void;
}

export interface Delivered {
  /** `<name>-<domain>-<date>`: every file's name starts with it. */
  baseName: string;
  image: string;
  sha256File: string;
  bmap: string;
  manifest: string;
  log: string;
  /** Digest of the delivered image file (compressed or not). */
  sha256: string;
  size: number;
  rawSize: number;
  manifestData: Record<string, unknown>;
}

/** Local date as YYYY-MM-DD. */
export function isoDate(d: Date): string {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export function imageFileName(baseName: string, compress: DeliverCompression): string {
  return `${baseName}.img${SUFFIX[compress]}`;
}

/** The names of the files delivered for an image (beside the extra files such as ca.crt), in the order a user reads them. */
export function deliveredNames(baseName: string, compress: DeliverCompression): { image: string; sha256: string; bmap: string; manifest: string; log: string } {
  const image = imageFileName(baseName, compress);
  return { image, sha256: `${image}.sha256`, bmap: `${baseName}.img.bmap`, manifest: `${baseName}.manifest.json`, log: `${baseName}.log` };
}

/** sha256sum's line: two spaces between digest and name (text mode). */
export function sha256Line(digest: string, fileName: string): string {
  return `${digest}  ${fileName}\n`;
}

export async function sha256Of(file: string, signal?: AbortSignal): Promise<string> {
  const h = createHash("sha256");
  const s = createReadStream(file, { highWaterMark: 4 << 20, ...(signal ? { signal } : {}) });
  for await (const chunk of s) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Move a file into --out: a rename on the same file system, else a sparse copy. */
async function moveInto(src: string, dest: string, signal?: AbortSignal): Promise<void> {
  try {
    await fsp.rename(src, dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
    await runCommand(sparseCopy(src, dest, `copying ${src} to ${dest}`), { signal });
  }
}

export async function deliver(input: DeliverInput): Promise<Delivered> {
  const outDir = path.resolve(input.outDir);
  mkdirOwned(outDir);
  const { baseName } = input;
  const names = deliveredNames(baseName, input.compress);
  const sha256Name = names.sha256;
  const final = (n: string) => path.join(outDir, n);
  const tmp = (n: string) => tempName(outDir, n);
  const status = input.onStatus ?? (() => {});
  const signal = input.signal;
  const rawImage = input.result.imagePath;
  const rawSize = statSync(rawImage).size;
  const timings: Record<string, number> = { ...input.timings, ...input.result.timings };

  return withCleanup(async (scope) => {
    const temps = new Set<string>();
    scope.defer(async () => {
      for (const t of temps) await fsp.rm(t, { force: true });
    }, "remove temporary files in --out");
    const track = (n: string) => {
      const t = tmp(n);
      temps.add(t);
      return t;
    };
    const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const t0 = Date.now();
      try {
        return await fn();
      } finally {
        timings[name] = Date.now() - t0;
      }
    };

    // One pass: bmap, the raw image's sha256 and, when compressing, the compressor's input.
    const bmapTmp = track(names.bmap);
    const imageTmp = track(names.image);
    let rawSha256: string;
    let sha256: string;
    let bmap: Bmap;
    const known = input.result.bmapPath && input.result.rawSha256 ? { sha256: input.result.rawSha256 } : undefined;
    if (input.compress === "none" && known) {
      // The engine wrote the image and computed both in the same pass.
      status("bmap", `block map and sha256 of ${formatBytes(rawSize)}: computed as the image was written`);
      bmap = await readBmap(input.result.bmapPath!);
      rawSha256 = sha256 = known.sha256;
      await moveInto(rawImage, imageTmp, signal);
    } else if (input.compress === "none") {
      status("bmap", `block map and sha256 of ${formatBytes(rawSize)}`);
      const scan = await timed("bmap", () => scanImage(rawImage, signal ? { signal } : {}));
      ({ bmap } = scan);
      rawSha256 = sha256 = scan.sha256;
      await moveInto(rawImage, imageTmp, signal);
    } else {
      const kind = input.compress;
      status("compress", `${kind}, block map and sha256 in one pass over ${formatBytes(rawSize)}`);
      const started = Date.now();
      let last = 0;
      const compressor = startCompressor(kind, imageTmp, rawSize, signal);
      try {
        const scan = await timed("compress", () =>
          scanImage(rawImage, {
            ...(signal ? { signal } : {}),
            sink: (c) => compressor.write(c),
            onProgress: (done, total) => {
              const now = Date.now();
              if (now - last < 2000) return;
              last = now;
              const secs = Math.round((now - started) / 1000);
              status("compress", `${kind}: ${Math.floor((done * 100) / total)}% of ${formatBytes(total)} read, ${formatBytes(compressor.written())} written, ${secs}s`);
            },
          }),
        );
        ({ bmap } = scan);
        rawSha256 = scan.sha256;
        sha256 = await timed("checksum", () => compressor.finish());
      } catch (err) {
        await compressor.abort();
        throw signal?.aborted ? signal.reason : err;
      }
    }
    if (input.result.bmapPath) {
      // The engine's own bmap, when it has one.
      await fsp.copyFile(input.result.bmapPath, bmapTmp);
      bmap = await readBmap(bmapTmp);
    } else {
      await writeFileAtomic(bmapTmp, serializeBmap(bmap));
    }
    const bmapResult = { bmap };
    const mapped = bmapResult.bmap.mappedBlocksCount * bmapResult.bmap.blockSize;
    signal?.throwIfAborted();

    status("checksum", `${names.image}: sha256 ${sha256.slice(0, 16)}…`);
    const size = statSync(imageTmp).size;
    await fsp.writeFile(track(sha256Name), sha256Line(sha256, names.image), { mode: 0o644 });
    for (const f of input.extraFiles) await fsp.writeFile(track(f.name), f.content, { mode: 0o644 });

    status("manifest", names.manifest);
    const bmapSha256 = await sha256Of(tmp(names.bmap));
    const { render, ...facts } = input.facts;
    const manifestData: Record<string, unknown> = {
      pibake: { version: PIBAKE_VERSION },
      createdAt: new Date().toISOString(),
      ...facts,
      image: {
        file: names.image,
        compression: input.compress,
        size,
        sha256,
        rawSize,
        rawSha256,
        mappedBytes: mapped,
      },
      engine: input.result.manifest,
      ...(render !== undefined ? { render } : {}),
      timings,
      files: {
        [names.image]: `sha256:${sha256}`,
        [names.bmap]: `sha256:${bmapSha256}`,
        ...Object.fromEntries(input.extraFiles.map((f) => [f.name, `sha256:${createHash("sha256").update(f.content).digest("hex")}`])),
      },
    };
    await fsp.writeFile(track(names.manifest), JSON.stringify(manifestData, null, 2) + "\n", { mode: 0o644 });
    // The log last before the renames, so that it holds everything up to here.
    await fsp.copyFile(input.logPath, track(names.log));
    await fsp.chmod(tmp(names.log), 0o644);
    signal?.throwIfAborted();

    // Into place: the sidecars, then the image, so that an image in --out always has its own.
    for (const n of [...input.extraFiles.map((f) => f.name), names.log, names.bmap, sha256Name, names.manifest, names.image]) {
      // Under sudo the delivered files are the invoking user's, as --out is.
      giveTo(tmp(n));
      await fsp.rename(tmp(n), final(n));
      temps.delete(tmp(n));
    }
    // The same build in another compression would now have a bmap and manifest that are not its own.
    for (const c of COMPRESSIONS) {
      if (c === input.compress) continue;
      const other = imageFileName(baseName, c);
      await fsp.rm(final(other), { force: true });
      await fsp.rm(final(`${other}.sha256`), { force: true });
    }
    return {
      baseName,
      image: final(names.image),
      sha256File: final(sha256Name),
      bmap: final(names.bmap),
      manifest: final(names.manifest),
      log: final(names.log),
      sha256,
      size,
      rawSize,
      manifestData,
    };
  });
}
