/**
 * The fast path of `pibake build --base IMAGE`: when IMAGE is one pibake
 * built and the new render changes only files (decide.ts), the files are
 * written into its root file system in-process (ext4 through libext2fs in
 * WebAssembly, the changes held in memory), then the new image is written in
 * one pass over the base, with no root, loop device, mount, chroot or
 * external program. The boot partition is not written: what pibake puts
 * there (cmdline.txt's Wi-Fi country) is the same by decision.
 */
import { mkdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../../../errors.js";
import { Ext4Volume } from "../../../image/ext4-volume.js";
import { writePatchedImage, type ImagePatch, type PatchedCopy } from "../../../image/patched-copy.js";
import { serializeBmap } from "../../../image/bmap.js";
import { detectCompression } from "../../../image/compression.js";
import { BuildLog } from "../../../host/log.js";
import { formatBytes, formatDuration } from "../../../ui/output.js";
import type { EngineInput, EngineResult, StepReporter } from "../../types.js";
import { readLayout, type Layout } from "../layout.js";
import { MARKER_PATH, markerOf, parseMarker, type ImageMarker } from "../marker.js";
import { checkNeverBooted } from "../system.js";
import { fullPathReasons } from "./decide.js";
import { inspectVolume, linkedDirectories } from "./inspect.js";
import { planEdits, type ImageEdit } from "./plan.js";
import { applyEdits, readAccounts } from "./apply.js";

export type FastOutcome = { kind: "built"; result: EngineResult } | { kind: "full"; reasons: string[] };

/** One fast regeneration, recorded step by step for the manifest. */
interface FastBuild {
  readonly input: EngineInput;
  readonly reporter: StepReporter;
  readonly log: BuildLog;
  readonly base: string;
  readonly label: string;
  readonly image: string;
  layout?: Layout;
  before?: ImageMarker;
  /** Planned while deciding, from the base as it is: what is checked is what is applied. */
  edits?: ImageEdit[];
  patches: ImagePatch[];
  copied?: PatchedCopy;
  written: string[];
  removed: string[];
}

/** Whether `base` may take the fast path at all (a raw image with pibake's build.json): the build then needs no root until the render says otherwise. */
export async function isFastCandidate(base: string): Promise<boolean> {
  try {
    if ((await detectCompression(base)) !== "none") return false;
    const layout = await readLayout(base, path.basename(base));
    const vol = await Ext4Volume.open(base, layout.root.offset, { label: base });
    try {
      return parseMarker(await vol.readText(`/${MARKER_PATH}`)) !== undefined;
    } finally {
      await vol.close();
    }
  } catch {
    // Whatever is wrong with the base, the full path's checks say it better.
    return false;
  }
}

export async function regenerateFast(input: EngineInput, reporter: StepReporter): Promise<FastOutcome> {
  const base = path.resolve(input.request.base!);
  const workDir = path.join(input.workDir, "base");
  mkdirSync(workDir, { recursive: true, mode: 0o700 });
  const b: FastBuild = {
    input,
    reporter,
    log: new BuildLog(input.logPath),
    base,
    label: path.basename(base),
    image: path.join(workDir, "image.img"),
    patches: [],
    written: [],
    removed: [],
  };
  const reasons = await decide(b);
  if (reasons.length > 0) return { kind: "full", reasons };
  reporter.begin("prepare base");
  reporter.info(`fast path: ${b.label} was built by pibake ${b.before!.pibake}, and only files change: they are written in-process, nothing runs in the image`);
  reporter.skip("packages", "already installed: the base is an image pibake made");
  reporter.begin("overlay");
  await editFiles(b);
  reporter.begin("finalize");
  await writeImage(b);
  return { kind: "built", result: result(b) };
}

/** Read the base (never written) and the new render: the reasons for the full path, none for the fast one. */
async function decide(b: FastBuild): Promise<string[]> {
  const compression = await detectCompression(b.base);
  if (compression !== "none")
    return [`the base is compressed (${compression}): the fast path starts from a raw .img, which it copies rather than decompresses`];
  let vol: Ext4Volume;
  try {
    b.layout = await readLayout(b.base, b.label);
    vol = await Ext4Volume.open(b.base, b.layout.root.offset, { label: b.label });
  } catch (err) {
    // The full path's own checks name what is wrong with such a base.
    return [`its root file system cannot be read in-process (${(err as Error).message})`];
  }
  try {
    const facts = await inspectVolume(vol);
    checkNeverBooted(facts, b.label);
    if (facts.marker) b.before = facts.marker;
    const { grow, shrink } = b.input.request;
    const reasons = fullPathReasons(facts, b.input.rendered, {
      compression,
      ...(grow !== undefined ? { grow } : {}),
      shrink: shrink === true,
      full: b.input.request.full === true,
    });
    // Planned only when nothing else sends the base to the root path: the plan needs its build.json, and its errors (a time zone the image lacks) are the fast path's.
    if (reasons.length === 0) reasons.push(...(await plan(b, vol)));
    b.log.line(
      reasons.length
        ? `fast path: not taken: ${reasons.join("; ")}`
        : `fast path: ${b.label} was built by pibake ${facts.marker!.pibake} on ${facts.marker!.builtAt}; only files change`,
    );
    return reasons;
  } finally {
    await vol.close();
  }
}

/**
 * Every file the render writes or removes, planned from the base (plan.ts):
 * none may lie behind a directory that is a link in the image, which the
 * root path writes through and libext2fs does not. The reasons for the root
 * path, none when the edits can be applied.
 */
async function plan(b: FastBuild, vol: Ext4Volume): Promise<string[]> {
  const { input } = b;
  const after = markerOf(input.config.model, input.rendered, new Date());
  b.edits = await planEdits(vol, {
    rendered: input.rendered,
    before: b.before!,
    after,
    passwordHash: input.secrets.userPasswordHash,
    today: Math.floor(Date.now() / 86_400_000),
  });
  const linked = await linkedDirectories(vol, b.edits);
  if (linked.length === 0) return [];
  const named = linked.map((l) => `${l.dir}, on the way to ${l.file}`).join("; ");
  return [
    `directories on the way to files the fast path writes or removes are links in the image (${named}): the root path writes through them inside the image, as the image's own tools do`,
  ];
}

/** The planned edits, written into the base's root file system as seen in memory (the base is never written); replaced and removed files zeroed first. */
async function editFiles(b: FastBuild): Promise<void> {
  const { input, reporter, log } = b;
  const edits = b.edits!;
  const vol = await Ext4Volume.open(b.base, b.layout!.root.offset, { label: b.label });
  try {
    reporter.status(`writing ${edits.length} files into the root file system (in-process)`);
    const done = await applyEdits(vol, edits, await readAccounts(vol), input.scope.signal);
    b.written = done.written;
    b.removed = done.removed;
  } catch (err) {
    if (err instanceof PibakeError || input.scope.signal.aborted) throw err;
    throw new PibakeError(`writing the files into ${b.label}'s root file system failed: ${(err as Error).message}`);
  } finally {
    await vol.close();
  }
  b.patches = [...vol.changes()];
  log.line(`written: ${b.written.join(", ")}`);
  if (b.removed.length) log.line(`removed (zeroed first): ${b.removed.join(", ")}`);
}

/** The new image: the base with the edits, written in one pass that also gives its sha256 and bmap. */
async function writeImage(b: FastBuild): Promise<void> {
  const started = Date.now();
  const bytes = b.patches.reduce((n, p) => n + p.bytes.length, 0);
  b.reporter.status(
    `writing the image: ${b.label} (${formatBytes(statSync(b.base).size)}) with ${formatBytes(bytes)} changed, its sha256 and block map in the same pass`,
  );
  b.copied = await writePatchedImage(b.base, b.image, b.patches, b.input.scope.signal);
  writeFileSync(`${b.image}.bmap`, serializeBmap(b.copied.bmap));
  b.log.line(
    `image written (${b.copied.method === "reflink" ? "a reflink of the base" : "sparse: the base's data blocks only"}, ${b.patches.length} changes of ${bytes} bytes) in ${formatDuration(Date.now() - started)}`,
  );
}

function result(b: FastBuild): EngineResult {
  const wanted = markerOf(b.input.config.model, b.input.rendered, new Date()).packages;
  return {
    imagePath: b.image,
    bmapPath: `${b.image}.bmap`,
    rawSha256: b.copied!.sha256,
    manifest: {
      engine: "base",
      baseImage: b.label,
      baseSize: statSync(b.base).size,
      baseCompression: "none",
      baseBuiltByPibake: b.before!.pibake,
      baseBuiltAt: b.before!.builtAt,
      regeneration: true,
      fastPath: {
        copy: b.copied!.method,
        bytesChanged: b.patches.reduce((n, p) => n + p.bytes.length, 0),
        filesWritten: b.written.length,
        filesRemoved: b.removed,
      },
      packagesInstalled: [],
      packagesAdded: { count: 0, installedBytes: 0, names: [] },
      packages: wanted,
      rootGrownBy: 0,
      freeBlocksZeroed: "replaced files zeroed in place",
      bootPartitionChanges: [],
      removedOverlayFiles: b.removed.map((p) => p.slice(1)),
      notes: [],
      imageSize: statSync(b.image).size,
      marker: MARKER_PATH,
    },
    timings: {},
    summary: ["fast path   the files written in-process, the image in one pass over the base; no root, mount or chroot"],
  };
}
