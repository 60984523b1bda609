/**
 * The base-image engine (`pibake build CONFIG --base IMAGE`): turn an existing
 * Raspberry Pi OS image into the broker image by running the same rendered
 * stage against it, as pi-gen would, with no pi-gen and no Docker.
 *
 * Partitions are attached by offset (no partition scan on loop devices), the
 * FAT boot partition is read and written with mtools (no vfat driver), the
 * root file system is mounted and the stage runs in its chroot (qemu-user on
 * other hosts). Everything held is released by clean-up scopes, on success,
 * failure and Ctrl-C alike.
 */
import { mkdirSync, readdirSync, statSync, truncateSync, writeFileSync } from "node:fs";
import path from "node:path";
import { uncommentedLines } from "../../host/shell.js";
import type { Model } from "../../config/model.js";
import { withCleanup, type CleanupScope } from "../../cleanup.js";
import { PibakeError } from "../../errors.js";
import type { MbrPartition } from "../../image/partitions.js";
import { writeRendered } from "../../render/write.js";
import { formatBytes, formatDuration } from "../../ui/output.js";
import { unmountTree } from "../../host/mounts.js";
import { runStage } from "../stage-runner.js";
import type { EngineInput, EngineResult, StepReporter } from "../types.js";
import { FatPartition } from "./fat.js";
import { BuildLog } from "../../host/log.js";
import { attachLoop } from "../../host/loop.js";
import { ImageRoot } from "../../host/image-root.js";
import { killChrootProcesses } from "../../host/release.js";
import { installedSizes, MARKER_PATH, markerOf, missingPackages, packagesAdded, writeMarker, type PackagesAdded } from "./marker.js";
import { stagePackageFiles, stagePackages } from "../../render/stage.js";
import { ext4FeaturesProblem } from "./preflight.js";
import { describeProgress, prepareBase, type PreparedBase } from "./prepare.js";
import {
  alignUp,
  AUTO_FREE_NODE_RED_BUILD,
  AUTO_FREE_WITHOUT_PACKAGES,
  checkFileSystem,
  growImage,
  MiB,
  parseGrow,
  shrinkFileSystem,
  truncateImage,
} from "./resize.js";
import { parseAptSizes, ROOM_MARGIN, roomForPackages, type AptSizes } from "./room.js";
import { mountChrootFilesystems, preventServiceStarts, provideResolvConf, runInChroot } from "../chroot.js";
import { aptEstimateScript, aptUpdateScript } from "../stage-runner.js";
import { applySystemSettings, checkBaseMatches, checkNeverBooted, inspectRootfs, type BaseFacts } from "./system.js";
import { findProgram } from "../../host/tools.js";
import { runCommand } from "../../host/process.js";
import { bindMount, discardFreeBlocks, growExt4, mountExt4, mountOverlay, readExt4Features, tryImageProgram, zeroFreeBlocks } from "./commands.js";
import { formatImageProgress, plainProgressPrinter, resolveOfficialImage, type ImageProgress, type OfficialImage } from "../../official/index.js";
import type { CachedImageRecord } from "../../official/cache.js";
import { fullPathRequirements, officialBase } from "./engine.js";
import { regenerateFast } from "./fast/regenerate.js";
import { detectCompression } from "../../image/compression.js";
import { problemsError, problemsOf } from "../problems.js";
import { readLayout, type Layout } from "./layout.js";

export { parseGrow } from "./resize.js";

/**
 * One build from a base image: what each step finds is recorded here for the
 * next step and for the manifest. The steps run in order, each a function of
 * this record.
 */
interface BaseBuild {
  readonly input: EngineInput;
  readonly model: Model;
  readonly reporter: StepReporter;
  readonly log: BuildLog;
  readonly signal: AbortSignal;
  /** The base image's file name, for messages. */
  readonly label: string;
  readonly base: string;
  /** The working copy and where its partitions are mounted. */
  readonly image: string;
  readonly mnt: string;
  /** The mounted root file system, every path in it resolved inside the image. */
  readonly tree: ImageRoot;
  readonly bootDir: string;
  prepared?: PreparedBase;
  layout?: Layout;
  root?: MbrPartition;
  facts?: BaseFacts;
  /** The stage's packages, and those the base lacks. */
  wanted: string[];
  missing: string[];
  /** Every stage package is in the base already: the packages step is skipped. */
  regeneration: boolean;
  growBy: number;
  removedOverlay: string[];
  zeroed: "fstrim" | "zerofree" | "none";
  bootChanges: { changed: string[]; removed: string[] };
  systemNotes: string[];
  /** apt's figures for the missing packages, and the package lists its estimate fetched (file name → bytes). */
  aptSizes?: AptSizes;
  aptLists?: Map<string, Buffer>;
  /** What the root file system was to have free for the build. */
  roomNeeded?: number;
  /** The packages the stage added to the base (dependencies included), and their installed size. */
  added?: PackagesAdded;
  shrunk?: { from: number; to: number };
  /** The official image the base is, when the build fetched it. */
  official?: CachedImageRecord;
}

/** The official Raspberry Pi OS Lite for the config's release and architecture: from the cache, or downloaded and verified. */
async function downloadOfficial(input: EngineInput, reporter: StepReporter): Promise<OfficialImage> {
  const { model } = input.config;
  reporter.begin("download base");
  const date = officialBase(input.request)?.date ?? model.image.raspiosDate;
  const show = reporter.live ? (p: ImageProgress) => reporter.status(formatImageProgress(p)) : plainProgressPrinter((line) => reporter.status(line));
  const got = await resolveOfficialImage({
    release: model.image.release,
    arch: model.image.arch,
    date,
    listUrl: input.request.osList,
    signal: input.scope.signal,
    onProgress: show,
    onStatus: (m) => reporter.status(m),
  });
  reporter.info(
    `${got.entry.fileName} (${got.entry.releaseDate}), sha256 ${got.entry.downloadSha256.slice(0, 16)}…, ${got.fromCache ? "from the cache" : "downloaded and verified"}: ${got.path}`,
  );
  return got;
}

export async function buildFromBase(input: EngineInput, reporter: StepReporter): Promise<EngineResult> {
  if (!officialBase(input.request)) {
    const fast = await regenerateFast(input, reporter);
    if (fast.kind === "built") return fast.result;
    await takeFullPath(input, reporter, fast.reasons);
  }
  const official = officialBase(input.request) ? await downloadOfficial(input, reporter) : undefined;
  const base = official ? official.path : path.resolve(input.request.base!);
  const workDir = path.join(input.workDir, "base");
  mkdirSync(path.join(workDir, "root"), { recursive: true, mode: 0o700 });
  const b: BaseBuild = {
    input,
    model: input.config.model,
    reporter,
    log: new BuildLog(input.logPath),
    signal: input.scope.signal,
    label: path.basename(base),
    base,
    image: path.join(workDir, "image.img"),
    mnt: path.join(workDir, "root"),
    tree: new ImageRoot(path.join(workDir, "root")),
    bootDir: path.join(workDir, "boot"),
    wanted: stagePackages(input.rendered),
    missing: [],
    regeneration: false,
    growBy: 0,
    removedOverlay: [],
    zeroed: "none",
    bootChanges: { changed: [], removed: [] },
    systemNotes: [],
    ...(official ? { official: official.entry } : {}),
  };
  reporter.begin("prepare base");
  await copyBase(b);
  await inspectBase(b);
  await growRoot(b);
  await applyStage(b);
  await checkAndShrink(b);
  return result(b);
}

/**
 * The fast path was not taken: as root, say why and build the full way (its
 * needs of this machine, deferred for an image pibake built, are checked
 * now); as a user, refuse with the reason and how to run it as root.
 */
async function takeFullPath(input: EngineInput, reporter: StepReporter, reasons: string[]): Promise<void> {
  const why = reasons.join("; ");
  if (process.getuid?.() !== 0) {
    throw new PibakeError(
      `${input.request.base} needs the full build (loop devices, mounts, a chroot), which needs root: ${why}. Run it with sudo -E (-E keeps the environment variables the config's secrets come from)`,
      2,
    );
  }
  const compression = await detectCompression(input.request.base!);
  const problems = problemsOf(fullPathRequirements(input.request, input.config.model, compression, undefined));
  if (problems.length > 0) throw problemsError(problems, `the full build from ${input.request.base} cannot run here (${why})`);
  reporter.info(`full build, not the fast path: ${why}`);
}

/** The working copy of the base (decompressed, sparse) and its partition layout. */
async function copyBase(b: BaseBuild): Promise<void> {
  const started = Date.now();
  let lastStatus = 0;
  b.prepared = await prepareBase(b.base, b.image, {
    log: b.log,
    signal: b.signal,
    onProgress: (done, total) => {
      const now = Date.now();
      if (now - lastStatus < 1000 && done !== total) return;
      lastStatus = now;
      b.reporter.status(describeProgress(b.label, done, total, started));
    },
    onCopy: (size) => b.reporter.status(`copying ${b.label} (${formatBytes(size)}; sparse, or a reflink where the file system has them)`),
  });
  b.log.line(`base ${b.prepared.method} in ${formatDuration(Date.now() - started)}: ${b.prepared.size} bytes`);
  b.layout = await readLayout(b.image, b.label);
  b.root = b.layout.root;
}

/** A first look, read-only, decides on regeneration and growth before anything changes. */
async function inspectBase(b: BaseBuild): Promise<void> {
  const root = b.root!;
  await withCleanup(async (scope) => {
    const dev = await attachLoop(b.image, root.offset, root.size, scope, { log: b.log });
    // Later steps check and resize the file system: features this host's e2fsprogs does not know stop the build now, not then.
    const fsck = await runCommand(readExt4Features(dev), { log: b.log });
    const unsupported = ext4FeaturesProblem(b.label, fsck.output);
    if (unsupported) throw new PibakeError(unsupported);
    await mountRoot(dev, b.mnt, scope, b.log, { readOnly: true });
    const facts = inspectRootfs(b.tree);
    checkBaseMatches(facts, b.model, b.label);
    checkNeverBooted(facts, b.label);
    b.facts = facts;
    b.missing = missingPackages(b.wanted, facts.installed);
    b.regeneration = facts.marker !== undefined && b.missing.length === 0;
    b.log.line(
      `base: ${facts.prettyName}, ${facts.arch}, boot partition at ${facts.bootMount}, ${formatBytes(facts.freeBytes)} free` +
        (facts.marker ? `, built by pibake ${facts.marker.pibake} on ${facts.marker.builtAt}` : ""),
    );
    b.log.line(
      b.regeneration ? `regeneration: every stage package is installed (${b.wanted.join(", ")})` : `packages to install: ${b.missing.join(", ") || "none"}`,
    );
    if (b.missing.length > 0) {
      await checkCanRun(b.mnt, b.model.image.arch, b.log);
      await estimatePackages(b, scope);
    }
  });
  decideGrowth(b);
}

/**
 * apt's own figures for the packages this base lacks: `apt-get update` and
 * an install answered "no", in the image's chroot over a throwaway writable
 * layer (the image stays read-only). The package lists it fetched are kept
 * for the packages step, which then needs no second update.
 */
async function estimatePackages(b: BaseBuild, scope: CleanupScope): Promise<void> {
  b.reporter.status(`asking apt in the image what ${b.missing.length} package(s) need (apt-get update${process.arch === "arm64" ? "" : ", under qemu-user"})`);
  const work = path.join(path.dirname(b.image), "apt-estimate");
  for (const d of ["upper", "work", "root"]) mkdirSync(path.join(work, d), { recursive: true, mode: 0o700 });
  const simRoot = path.join(work, "root");
  await runCommand(mountOverlay(b.mnt, path.join(work, "upper"), path.join(work, "work"), simRoot), { log: b.log });
  scope.defer(async () => {
    await killChrootProcesses(simRoot, b.log);
    await unmountTree(simRoot);
  }, `unmount ${simRoot}`);
  const sim = new ImageRoot(simRoot);
  await mountChrootFilesystems(sim, scope);
  preventServiceStarts(sim, scope);
  provideResolvConf(sim, scope);
  const said: string[] = [];
  const lines = toolLines(b);
  await runInChroot(simRoot, {
    what: "asking apt in the image's chroot what the packages need (apt-get update, then an install answered no); check the network and the image's apt sources",
    script: aptUpdateScript() + aptEstimateScript(b.missing, stageInstallsWithoutRecommends(b.input.rendered)),
    signal: b.signal,
    onLine: (line) => {
      said.push(line);
      lines(line);
    },
  });
  const sizes = parseAptSizes(said.join("\n"));
  if (sizes.downloadBytes === 0 && sizes.installBytes === 0) {
    // apt said nothing we can read (another apt's wording): the room of old, which holds pibake's own packages.
    b.log.line(`apt's estimate could not be read; assuming ${formatBytes(FALLBACK_PACKAGE_ROOM)} for ${b.missing.join(", ")}`);
    return;
  }
  b.aptSizes = sizes;
  b.log.line(`apt: ${formatBytes(b.aptSizes.downloadBytes)} to download, ${formatBytes(b.aptSizes.installBytes)} installed for ${b.missing.join(", ")}`);
  b.aptLists = new Map();
  for (const e of sim.listEntries("/var/lib/apt/lists")) {
    if (e.isFile() && e.name !== "lock") b.aptLists.set(e.name, sim.read(`/var/lib/apt/lists/${e.name}`)!);
  }
}

/** Room for packages when apt's figures cannot be read. */
const FALLBACK_PACKAGE_ROOM = 1024 * MiB;

/** How much to grow the root partition: apt's figures plus the margin (or, for files only, a little), beyond what is free; a --grow that cannot hold them is refused now. */
function decideGrowth(b: BaseBuild): void {
  const free = b.facts!.freeBytes;
  const nodeRedRoom = b.model.nodeRed?.install === "build" && !b.regeneration ? AUTO_FREE_NODE_RED_BUILD : 0;
  const forPackages = b.missing.length === 0 ? 0 : b.aptSizes ? roomForPackages(b.aptSizes) : FALLBACK_PACKAGE_ROOM;
  const need = Math.max(forPackages, AUTO_FREE_WITHOUT_PACKAGES) + nodeRedRoom;
  b.roomNeeded = need;
  const grow = parseGrow(b.input.request.grow);
  if (grow === "auto") {
    b.growBy = need <= free ? 0 : alignUp(need - free, 64 * MiB);
    return;
  }
  if (free + grow < need) {
    const what = b.aptSizes
      ? `apt's ${formatBytes(b.aptSizes.downloadBytes)} of downloads and ${formatBytes(b.aptSizes.installBytes)} installed, plus ${Math.round(ROOM_MARGIN.fraction * 100)} % and ${formatBytes(ROOM_MARGIN.bytes)}`
      : "the overlay and logs";
    throw new PibakeError(
      `--grow ${b.input.request.grow}: the build needs ${formatBytes(need)} free in the root file system (${what}${nodeRedRoom ? `, and ${formatBytes(nodeRedRoom)} for Node-RED's install at build time` : ""}), ` +
        `but ${b.label} has ${formatBytes(free)} free, ${formatBytes(free + grow)} with that growth: use --grow ${formatBytes(alignUp(need - free, 64 * MiB))
          .replace(/ /g, "")
          .replace(/iB$/, "")} or more, or leave --grow out`,
      2,
    );
  }
  b.growBy = grow;
}

/** More room in the image for the root partition; the file system follows once attached. */
async function growRoot(b: BaseBuild): Promise<void> {
  if (b.growBy <= 0) return;
  b.reporter.status(`growing the root partition by ${formatBytes(b.growBy)} (${formatBytes(b.facts!.freeBytes)} free)`);
  b.root = await growImage(b.image, b.root!, b.growBy);
  b.log.line(`root partition grown by ${b.growBy} bytes to ${b.root.size}`);
}

/**
 * With the root file system mounted and the boot partition's files at its
 * boot mount: the system settings, the rendered stage as pi-gen runs it
 * (packages, then the overlay and scripts), and what pi-gen's export does.
 */
async function applyStage(b: BaseBuild): Promise<void> {
  const { input, model, log, signal, reporter, mnt } = b;
  const facts = b.facts!;
  const root = b.root!;
  await withCleanup(async (scope) => {
    const dev = await attachLoop(b.image, root.offset, root.size, scope, { log });
    if (b.growBy > 0) {
      await checkFileSystem(dev, { log, signal, what: "checking the root file system before growing it" });
      await runCommand(growExt4(dev), { log, signal });
    }
    await mountRoot(dev, mnt, scope, log);
    await checkCanRun(mnt, model.image.arch, log);

    // The boot partition's files, at /boot/firmware as on the Pi; written back with mtools afterwards.
    mkdirSync(b.bootDir, { recursive: true, mode: 0o700 });
    const fat = new FatPartition(b.image, b.layout!.boot.offset, log);
    const bootBefore = await fat.extract(b.bootDir);
    const bootTarget = b.tree.mkdir(facts.bootMount);
    await runCommand(bindMount(b.bootDir, bootTarget, `making the boot partition's files available at ${facts.bootMount}`), { log });
    scope.defer(() => unmountTree(bootTarget), `unmount ${bootTarget}`);

    const before = snapshotState(b.tree);
    for (const [name, bytes] of b.aptLists ?? []) b.tree.write(`/var/lib/apt/lists/${name}`, bytes, 0o644);
    await applySystem(b);

    // Files of the previous overlay that this one no longer has.
    const overlayPaths = input.rendered.overlay.map((f) => f.path);
    if (facts.marker) {
      b.removedOverlay = facts.marker.overlay.filter((p) => !overlayPaths.includes(p));
      for (const p of b.removedOverlay) b.tree.remove(p);
      for (const p of facts.marker.systemFiles ?? []) b.tree.remove(p);
      if (b.removedOverlay.length) log.line(`removed files of the previous overlay: ${b.removedOverlay.join(", ")}`);
    }

    await runRenderedStage(b);

    reporter.begin("finalize");
    b.added = packagesAdded(facts.installed, installedSizes(b.tree));
    log.line(
      `packages added to the base: ${b.added.names.length} (${formatBytes(b.added.installedBytes)} installed)${b.added.names.length ? `: ${b.added.names.join(", ")}` : ""}`,
    );
    writeMarker(b.tree, markerOf(model, input.rendered, new Date()));
    finalizeRootfs(b.tree, before, log);
    b.bootChanges = await fat.writeBack(b.bootDir, bootBefore);
    log.line(`boot partition: ${b.bootChanges.changed.length} file(s) written, ${b.bootChanges.removed.length} removed`);
    // Free blocks become holes in the image file (loop devices pass discards on as hole punches).
    reporter.status("zeroing free blocks");
    const trim = await runCommand(discardFreeBlocks(mnt), { log });
    if (trim.exitCode === 0) b.zeroed = "fstrim";
  });
}

/** Hostname, first user, SSH, locale and the rest that pi-gen's config sets; the chroot part only when they changed. */
async function applySystem(b: BaseBuild): Promise<void> {
  b.reporter.status("hostname, first user, SSH, locale, time zone, keyboard, Wi-Fi country");
  const plan = applySystemSettings(b.tree, b.bootDir, b.input.rendered.system, b.input.secrets.userPasswordHash);
  b.systemNotes = plan.notes;
  for (const n of plan.notes) b.log.line(`note: ${n}`);
  if (b.facts!.marker?.systemDigest === plan.digest) {
    b.log.line("system settings: the user, SSH keys, locale and keyboard are as the base's last pibake build left them; the chroot part is not needed");
  } else {
    const systemStage = path.join(path.dirname(b.image), "system-stage");
    mkdirSync(path.join(systemStage, "00-system"), { recursive: true, mode: 0o700 });
    writeFileSync(path.join(systemStage, "00-system", "00-run-chroot.sh"), plan.script, { mode: 0o700 });
    await runStage({ stageDir: systemStage, rootfs: b.mnt, signal: b.signal, onLine: toolLines(b) });
  }
}

/** The rendered stage, as pi-gen runs it: the packages step, then the overlay and the scripts. */
async function runRenderedStage(b: BaseBuild): Promise<void> {
  const { input, reporter, regeneration } = b;
  const renderDir = path.join(path.dirname(b.image), "render");
  writeRendered(renderDir, input.rendered);
  if (regeneration) reporter.skip("packages", "already installed: the base is an image pibake made");
  else reporter.begin("packages");
  let current = "";
  let overlayStarted = false;
  await runStage({
    stageDir: path.join(renderDir, "stage"),
    rootfs: b.mnt,
    skipPackages: regeneration,
    // The estimate's apt-get update already fetched the lists (copied in by applyStage).
    aptUpdate: b.aptLists === undefined,
    env: stageEnv(b.model),
    signal: b.signal,
    onStep: (event, what) => {
      b.log.line(`[${event} ${what}]`);
      if (event !== "Begin") return;
      current = what;
      const base = path.basename(what);
      if (/^\d\d-(run|run-chroot)\.sh$/.test(base) && !overlayStarted) {
        overlayStarted = true;
        reporter.begin("overlay");
      }
      const sub = path.basename(path.dirname(what));
      if (/^\d\d-packages(-nr)?$/.test(base)) {
        if (!regeneration && stagePackageFile(input.rendered, `${sub}/${base}`)) reporter.status(`apt-get install (${sub}/${base}) in the chroot`);
      } else if (/^\d\d-(run|run-chroot)\.sh$|^\d\d-debconf$/.test(base)) reporter.status(`${sub}/${base}`);
    },
    onLine: toolLines(b),
  }).catch((err: unknown) => {
    if (b.signal.aborted || !(err instanceof PibakeError)) throw err;
    const base = path.basename(current);
    const where = `${path.basename(path.dirname(current))}/${base}`;
    const what = /packages/.test(base)
      ? `installing the packages of ${where} in the image failed (apt-get in the chroot${process.arch === "arm64" ? "" : ", under qemu-user"}); check the network and the image's apt sources`
      : `${where} failed`;
    throw new PibakeError(`${what}: ${err.message}`);
  });
  if (!overlayStarted) reporter.begin("overlay");
}

/** Unmounted: check, zero what fstrim could not, optionally shrink. */
async function checkAndShrink(b: BaseBuild): Promise<void> {
  const { log, signal, reporter } = b;
  const root = b.root!;
  await withCleanup(async (scope) => {
    const dev = await attachLoop(b.image, root.offset, root.size, scope, { log });
    reporter.status("checking the root file system (e2fsck -f)");
    await checkFileSystem(dev, { log, signal });
    if (b.zeroed === "none") {
      if (findProgram("zerofree")) {
        reporter.status("zeroing free blocks (zerofree)");
        await runCommand(zeroFreeBlocks(dev), { log, signal });
        b.zeroed = "zerofree";
      } else {
        reporter.warn(
          "the loop device does not support discard and zerofree is not installed: free blocks are not zeroed, so the compressed image is larger (sudo apt-get install zerofree)",
        );
      }
    }
    if (b.input.request.shrink) {
      reporter.status("shrinking the root file system (resize2fs)");
      const sb = (await readLayout(b.image, b.label)).ext;
      const r = await shrinkFileSystem(dev, sb.blockSize, root.size, { log, signal });
      if (r) b.shrunk = { from: root.size, to: r.fsBytes };
      else log.line("--shrink: the root file system is already within its margin");
    }
  });
  if (b.shrunk) {
    b.root = await truncateImage(b.image, root, b.shrunk.to);
    log.line(`shrunk the root partition from ${b.shrunk.from} to ${b.root.size} bytes`);
  }
}

async function result(b: BaseBuild): Promise<EngineResult> {
  const facts = b.facts!;
  const prepared = b.prepared!;
  return {
    imagePath: b.image,
    manifest: {
      engine: "base",
      baseImage: b.label,
      baseSha256: await prepared.sha256,
      baseCompression: prepared.compression,
      baseSize: prepared.size,
      baseSystem: facts.prettyName,
      baseBuiltByPibake: facts.marker ? facts.marker.pibake : false,
      regeneration: b.regeneration,
      packagesInstalled: b.regeneration ? [] : b.missing,
      packagesAdded: { count: b.added?.names.length ?? 0, installedBytes: b.added?.installedBytes ?? 0, names: b.added?.names ?? [], base: b.added?.base },
      packages: b.wanted,
      rootGrownBy: b.growBy,
      ...(b.aptSizes ? { aptEstimate: { ...b.aptSizes, roomNeeded: b.roomNeeded, margin: ROOM_MARGIN } } : {}),
      ...(b.shrunk ? { rootShrunkTo: b.root!.size } : {}),
      freeBlocksZeroed: b.zeroed,
      bootPartitionChanges: b.bootChanges.changed,
      removedOverlayFiles: b.removedOverlay,
      notes: b.systemNotes,
      imageSize: statSync(b.image).size,
      marker: MARKER_PATH,
      ...(b.official
        ? {
            official: {
              name: b.official.name,
              file: b.official.fileName,
              releaseDate: b.official.releaseDate,
              url: b.official.url,
              sha256: b.official.downloadSha256,
              extractSha256: b.official.extractSha256,
              list: b.official.listUrl,
            },
          }
        : {}),
    },
    timings: {},
    summary: [
      `packages    ${b.added?.names.length ?? 0} added to the base (${formatBytes(b.added?.installedBytes ?? 0)} installed; the base has ${b.added?.base.count ?? "?"}, ${formatBytes(b.added?.base.installedBytes ?? 0)}), root partition grown by ${formatBytes(b.growBy)}`,
    ],
  };
}

/** What apt and the stage's scripts print: the log and --verbose get every line, the status line apt's progress every 2 seconds. */
function toolLines(b: BaseBuild): (line: string) => void {
  let last = 0;
  return (line) => {
    b.reporter.detail(line);
    const now = Date.now();
    if (now - last >= 2000 && /^(Get:\d+|Unpacking|Setting up|Processing triggers|Fetched)/.test(line)) {
      last = now;
      b.reporter.status(line.length > 100 ? `${line.slice(0, 97)}...` : line);
    }
  };
}

/** Whether every package file of the stage is NN-packages-nr (installed without recommends), so that apt's estimate asks the same. */
function stageInstallsWithoutRecommends(rendered: EngineInput["rendered"]): boolean {
  return stagePackageFiles(rendered).every((f) => f.path.endsWith("-nr"));
}

/** Whether the rendered stage file lists any package (an empty list is a step that does nothing). */
function stagePackageFile(rendered: EngineInput["rendered"], rel: string): boolean {
  const f = rendered.stage.find((s) => s.path === rel);
  return !!f && uncommentedLines(f.content.toString("utf8")).length > 0;
}

async function mountRoot(dev: string, mnt: string, scope: CleanupScope, log: BuildLog, opts: { readOnly?: boolean } = {}): Promise<void> {
  await runCommand(mountExt4(dev, mnt, opts.readOnly === true), { log });
  // Ctrl-C: stop what runs in the chroot at once, so that its mounts can go.
  const onAbort = () => void killChrootProcesses(mnt, log);
  scope.signal.addEventListener("abort", onAbort, { once: true });
  scope.defer(async () => {
    scope.signal.removeEventListener("abort", onAbort);
    await killChrootProcesses(mnt, log);
    await unmountTree(mnt);
  }, `unmount ${mnt}`);
}

/** The image's programs must run here (natively or through qemu-user): try one before the long work. */
async function checkCanRun(rootfs: string, arch: string, log: BuildLog): Promise<void> {
  const r = await runCommand(tryImageProgram(rootfs), { log });
  if (r.exitCode !== 0) {
    throw new PibakeError(
      `cannot run the image's ${arch} programs in its chroot (${r.output.trim() || `exit ${r.exitCode ?? r.signal}`}): ` +
        `check that qemu-user is registered with binfmt_misc with the F flag (grep flags /proc/sys/fs/binfmt_misc/qemu-*), e.g. sudo apt-get install qemu-user-static binfmt-support`,
    );
  }
}

/** What pi-gen exports to a stage's NN-run.sh, from the config. */
function stageEnv(m: Model): Record<string, string> {
  return {
    IMG_NAME: m.image.name,
    RELEASE: m.image.release,
    TARGET_HOSTNAME: m.image.hostname,
    FIRST_USER_NAME: m.user.name,
    LOCALE_DEFAULT: m.image.locale,
    TIMEZONE_DEFAULT: m.image.timezone,
    KEYBOARD_KEYMAP: m.image.keyboard.keymap,
    KEYBOARD_LAYOUT: m.image.keyboard.layout,
    ENABLE_SSH: "1",
    ...(m.network.wifi ? { WPA_COUNTRY: m.network.wifi.country } : {}),
  };
}

interface StateBefore {
  sshHostKeys: Set<string>;
  aptLists: boolean;
  /** /etc/machine-id as the base has it ("uninitialized" on trixie, empty on bookworm), restored byte for byte: it decides whether systemd treats the next boot as the first. */
  machineId: { bytes: Buffer; mode: number } | undefined;
  dbusMachineId: boolean;
}

function machineIdOf(root: ImageRoot): StateBefore["machineId"] {
  const bytes = root.read("/etc/machine-id");
  return bytes ? { bytes, mode: root.stat("/etc/machine-id")!.mode & 0o7777 } : undefined;
}

function snapshotState(root: ImageRoot): StateBefore {
  return {
    sshHostKeys: new Set(root.list("/etc/ssh").filter((f) => f.startsWith("ssh_host_"))),
    aptLists: root.list("/var/lib/apt/lists").some((f) => f !== "lock" && f !== "partial" && f !== "auxfiles"),
    machineId: machineIdOf(root),
    dbusMachineId: root.exists("/var/lib/dbus/machine-id"),
  };
}

/** What usermod, groupmod and chpasswd leave behind: the files as they were, earlier password hashes included. export-image removes them too. */
export const ACCOUNT_BACKUPS = ["passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-"].map((f) => `etc/${f}`);

/**
 * pi-gen's export-image finalise, for what a build adds: apt's downloads and
 * (when the base had none) its lists, logs, and per-machine state that the
 * first boot must create (SSH host keys, machine-id).
 */
function finalizeRootfs(root: ImageRoot, before: StateBefore, log: BuildLog): void {
  const removeIn = (dir: string, keep: (f: string) => boolean) => {
    for (const f of root.list(dir)) if (!keep(f)) root.remove(`${dir}/${f}`, { recursive: true });
  };
  removeIn("/var/cache/apt/archives", (f) => f === "lock" || f === "partial");
  removeIn("/var/cache/apt", (f) => !f.endsWith(".bin"));
  if (!before.aptLists) removeIn("/var/lib/apt/lists", (f) => f === "lock" || f === "partial" || f === "auxfiles");
  const newKeys = root.list("/etc/ssh").filter((f) => f.startsWith("ssh_host_") && !before.sshHostKeys.has(f));
  for (const k of newKeys) root.remove(`/etc/ssh/${k}`);
  if (before.machineId) root.write("/etc/machine-id", before.machineId.bytes, before.machineId.mode);
  else root.remove("/etc/machine-id");
  if (!before.dbusMachineId) root.remove("/var/lib/dbus/machine-id");
  for (const f of ACCOUNT_BACKUPS) root.remove(f);
  // Within the resolved /var/log, entries are taken as they are: a link is neither followed nor truncated.
  const truncateLogs = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const f = path.join(dir, e.name);
      if (e.isDirectory()) truncateLogs(f);
      else if (e.isFile()) truncateSync(f, 0);
    }
  };
  if (root.isDirectory("/var/log")) truncateLogs(root.path("/var/log"));
  log.line(
    `finalised: apt caches removed${before.aptLists ? "" : ", apt lists removed"}, logs emptied, machine-id as the base had it, account backups removed${newKeys.length ? `, new SSH host keys removed (${newKeys.join(", ")})` : ""}`,
  );
}

export type { MbrPartition, BaseFacts };
