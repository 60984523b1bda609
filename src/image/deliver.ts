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
import { promises as fsp, statSync } from "node:fs";
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

export { removeStaleTemps } from "./temp-files.js";
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

/** Move a file into --out: a rename on the same file system, else a sparse copy. */
async function moveInto(src: string, dest: string, signal?: AbortSignal): Promise<void> {
  try {
    await fsp.rename(src, dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
    await runCommand(sparseCopy(src, dest, `copying ${src} to ${dest}`), { signal });
  }
}

/**
 * One delivery: where its files go, and what each step finds for the next
 * step and the manifest. The steps run in order, each a function of this
 * record.
 */
interface Delivery {
  readonly input: DeliverInput;
  readonly outDir: string;
  readonly names: ReturnType<typeof deliveredNames>;
  readonly status: (phase: DeliverPhase, message: string) => void;
  readonly signal: AbortSignal | undefined;
  /** The engine's raw image, and its size. */
  readonly rawImage: string;
  readonly rawSize: number;
  readonly timings: Record<string, number>;
  /** Temporary files in --out not yet renamed into place: a failure removes them. */
  readonly temps: Set<string>;
  rawSha256?: string;
  /** Digest and size of the delivered image file (compressed or not). */
  sha256?: string;
  size?: number;
  bmap?: Bmap;
  manifestData?: Record<string, unknown>;
}

export async function deliver(input: DeliverInput): Promise<Delivered> {
  const outDir = path.resolve(input.outDir);
  mkdirOwned(outDir);
  const rawImage = input.result.imagePath;
  const d: Delivery = {
    input,
    outDir,
    names: deliveredNames(input.baseName, input.compress),
    status: input.onStatus ?? (() => {}),
    signal: input.signal,
    rawImage,
    rawSize: statSync(rawImage).size,
    timings: { ...input.timings, ...input.result.timings },
    temps: new Set<string>(),
  };
  return withCleanup(async (scope) => {
    scope.defer(async () => {
      for (const t of d.temps) await fsp.rm(t, { force: true });
    }, "remove temporary files in --out");
    await writeImageOnePass(d);
    await writeBmap(d);
    await writeSha256AndExtras(d);
    await writeManifest(d);
    await copyLog(d);
    await moveIntoPlace(d);
    await removeOtherCompressions(d);
    return delivered(d);
  });
}

/** The temporary name in --out of a delivered file, removed on failure until it is renamed into place. */
function track(d: Delivery, name: string): string {
  const t = tempName(d.outDir, name);
  d.temps.add(t);
  return t;
}

/** Run a step and record how long it took under `name`, for the manifest. */
async function timed<T>(d: Delivery, name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    return await fn();
  } finally {
    d.timings[name] = Date.now() - t0;
  }
}

/** One pass: the image into --out, its bmap, the raw image's sha256 and, when compressing, the compressor's input. */
async function writeImageOnePass(d: Delivery): Promise<void> {
  const imageTmp = track(d, d.names.image);
  const { result } = d.input;
  if (d.input.compress === "none" && result.bmapPath && result.rawSha256) {
    // The engine wrote the image and computed both in the same pass.
    d.status("bmap", `block map and sha256 of ${formatBytes(d.rawSize)}: computed as the image was written`);
    d.bmap = await readBmap(result.bmapPath);
    d.rawSha256 = d.sha256 = result.rawSha256;
    await moveInto(d.rawImage, imageTmp, d.signal);
  } else if (d.input.compress === "none") {
    d.status("bmap", `block map and sha256 of ${formatBytes(d.rawSize)}`);
    const signal = d.signal;
    const scan = await timed(d, "bmap", () => scanImage(d.rawImage, signal ? { signal } : {}));
    d.bmap = scan.bmap;
    d.rawSha256 = d.sha256 = scan.sha256;
    await moveInto(d.rawImage, imageTmp, d.signal);
  } else {
    await compressAndScan(d, d.input.compress, imageTmp);
  }
}

/** The image through the compressor, read once for the compressor, the bmap and the raw sha256; the compressor gives the delivered file's sha256. */
async function compressAndScan(d: Delivery, kind: Exclude<DeliverCompression, "none">, imageTmp: string): Promise<void> {
  const signal = d.signal;
  d.status("compress", `${kind}, block map and sha256 in one pass over ${formatBytes(d.rawSize)}`);
  const started = Date.now();
  let last = 0;
  const compressor = startCompressor(kind, imageTmp, d.rawSize, signal);
  try {
    const scan = await timed(d, "compress", () =>
      scanImage(d.rawImage, {
        ...(signal ? { signal } : {}),
        sink: (c) => compressor.write(c),
        onProgress: (done, total) => {
          const now = Date.now();
          if (now - last < 2000) return;
          last = now;
          const secs = Math.round((now - started) / 1000);
          d.status(
            "compress",
            `${kind}: ${Math.floor((done * 100) / total)}% of ${formatBytes(total)} read, ${formatBytes(compressor.written())} written, ${secs}s`,
          );
        },
      }),
    );
    d.bmap = scan.bmap;
    d.rawSha256 = scan.sha256;
    d.sha256 = await timed(d, "checksum", () => compressor.finish());
  } catch (err) {
    await compressor.abort();
    throw signal?.aborted ? signal.reason : err;
  }
}

/** The bmap file: the engine's own when it has one, else the one the pass made. */
async function writeBmap(d: Delivery): Promise<void> {
  const bmapTmp = track(d, d.names.bmap);
  if (d.input.result.bmapPath) {
    await fsp.copyFile(d.input.result.bmapPath, bmapTmp);
    d.bmap = await readBmap(bmapTmp);
  } else {
    await writeFileAtomic(bmapTmp, serializeBmap(d.bmap!));
  }
  d.signal?.throwIfAborted();
}

/** The image's .sha256 file, and the extra files beside it. */
async function writeSha256AndExtras(d: Delivery): Promise<void> {
  const { names } = d;
  d.status("checksum", `${names.image}: sha256 ${d.sha256!.slice(0, 16)}…`);
  d.size = statSync(tempName(d.outDir, names.image)).size;
  await fsp.writeFile(track(d, names.sha256), sha256Line(d.sha256!, names.image), { mode: 0o644 });
  for (const f of d.input.extraFiles) await fsp.writeFile(track(d, f.name), f.content, { mode: 0o644 });
}

/** What was built, from what, with which files and their digests. */
async function writeManifest(d: Delivery): Promise<void> {
  const { names, input } = d;
  d.status("manifest", names.manifest);
  // The bmap is a few kilobytes: read whole.
  const bmapSha256 = createHash("sha256")
    .update(await fsp.readFile(tempName(d.outDir, names.bmap)))
    .digest("hex");
  const { render, ...facts } = input.facts;
  d.manifestData = {
    pibake: { version: PIBAKE_VERSION },
    createdAt: new Date().toISOString(),
    ...facts,
    image: {
      file: names.image,
      compression: input.compress,
      size: d.size,
      sha256: d.sha256,
      rawSize: d.rawSize,
      rawSha256: d.rawSha256,
      mappedBytes: d.bmap!.mappedBlocksCount * d.bmap!.blockSize,
    },
    engine: input.result.manifest,
    ...(render !== undefined ? { render } : {}),
    timings: d.timings,
    files: {
      [names.image]: `sha256:${d.sha256}`,
      [names.bmap]: `sha256:${bmapSha256}`,
      ...Object.fromEntries(input.extraFiles.map((f) => [f.name, `sha256:${createHash("sha256").update(f.content).digest("hex")}`])),
    },
  };
  await fsp.writeFile(track(d, names.manifest), JSON.stringify(d.manifestData, null, 2) + "\n", { mode: 0o644 });
}

/** The log last before the renames, so that it holds everything up to here. */
async function copyLog(d: Delivery): Promise<void> {
  await fsp.copyFile(d.input.logPath, track(d, d.names.log));
  await fsp.chmod(tempName(d.outDir, d.names.log), 0o644);
  d.signal?.throwIfAborted();
}

/** Into place: the sidecars, then the image, so that an image in --out always has its own. */
async function moveIntoPlace(d: Delivery): Promise<void> {
  const { names } = d;
  for (const n of [...d.input.extraFiles.map((f) => f.name), names.log, names.bmap, names.sha256, names.manifest, names.image]) {
    const t = tempName(d.outDir, n);
    // Under sudo the delivered files are the invoking user's, as --out is.
    giveTo(t);
    await fsp.rename(t, path.join(d.outDir, n));
    d.temps.delete(t);
  }
}

/** The same build in another compression would now have a bmap and manifest that are not its own. */
async function removeOtherCompressions(d: Delivery): Promise<void> {
  for (const c of COMPRESSIONS) {
    if (c === d.input.compress) continue;
    const other = imageFileName(d.input.baseName, c);
    await fsp.rm(path.join(d.outDir, other), { force: true });
    await fsp.rm(path.join(d.outDir, `${other}.sha256`), { force: true });
  }
}

function delivered(d: Delivery): Delivered {
  const final = (n: string) => path.join(d.outDir, n);
  return {
    baseName: d.input.baseName,
    image: final(d.names.image),
    sha256File: final(d.names.sha256),
    bmap: final(d.names.bmap),
    manifest: final(d.names.manifest),
    log: final(d.names.log),
    sha256: d.sha256!,
    size: d.size!,
    rawSize: d.rawSize,
    manifestData: d.manifestData!,
  };
}
