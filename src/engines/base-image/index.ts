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
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, promises as fsp } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { withCleanup, type CleanupScope } from "../../cleanup.js";
import { PibakeError } from "../../errors.js";
import { checkFileSystems, checkRaspiLayout, parseMbr, SECTOR_SIZE, type MbrPartition } from "../../image/partitions.js";
import { detectCompression } from "../../image/compression.js";
import { writeRendered } from "../../render/write.js";
import { formatBytes, formatDuration } from "../../ui/output.js";
import { unmountTree } from "../../host/mounts.js";
import { runStage } from "../stage-runner.js";
import type { EngineInput, EngineResult } from "../types.js";
import { FatPartition } from "./fat.js";
import { BuildLog } from "../../host/log.js";
import { attachLoop } from "../../host/loop.js";
import { killChrootProcesses } from "../../host/release.js";
import { MARKER_PATH, missingPackages, stagePackages, writeMarker, type ImageMarker } from "./marker.js";
import { checkBinfmt, checkPrograms, checkRoot, ext4FeaturesProblem } from "./preflight.js";
import { describeProgress, prepareBase } from "./prepare.js";
import { AUTO_FREE_NODE_RED_BUILD, autoGrow, checkFileSystem, growImage, shrinkFileSystem, truncateImage } from "./resize.js";
import { applySystemSettings, checkBaseMatches, checkNeverBooted, inspectRootfs, type BaseFacts } from "./system.js";
import { findProgram, tool } from "../../host/tools.js";
import { PIBAKE_VERSION } from "../../version.js";

export { parseGrow } from "./resize.js";

export interface StepEvents {
  /** The named step starts (the previous one is done). */
  begin(name: string): void;
  /** The named step is not needed, and why. */
  skip(name: string, why: string): void;
  /** A line of progress within the current step. */
  status(message: string): void;
}

export interface BaseImageOptions {
  /** The image to start from: .img, .img.xz, .img.gz, .img.zst or .zip. */
  base: string;
  /** A private directory for the working image, mount points and the stage (removed by the caller). Best on the file system of --out. */
  workDir: string;
  /** Bytes to add to the root partition, or "auto": enough free space for the packages. */
  grow?: "auto" | number;
  /** Shrink the root file system and the image to the used size plus a margin. */
  shrink?: boolean;
  steps?: StepEvents;
}

const quietSteps: StepEvents = { begin() {}, skip() {}, status() {} };

/** Checks that need no work: run before anything is decompressed. */
export async function preflightBase(opts: { base: string; arch: string; shrink?: boolean }): Promise<void> {
  checkRoot();
  const compression = await detectCompression(opts.base);
  checkPrograms(compression, opts.shrink === true);
  checkBinfmt(opts.arch);
}

export async function buildFromBase(input: EngineInput & BaseImageOptions): Promise<EngineResult> {
  const { model } = input.config;
  const out = input.output;
  const steps = input.steps ?? quietSteps;
  const log = new BuildLog(input.logPath);
  const signal = input.scope.signal;
  const label = path.basename(input.base);
  const timings: Record<string, number> = {};
  let lastToolStatus = 0;
  let phase = "prepare base";
  let phaseStart = Date.now();
  const enterPhase = (name: string) => {
    timings[phase] = (timings[phase] ?? 0) + (Date.now() - phaseStart);
    phase = name;
    phaseStart = Date.now();
    log.line(`== ${name}`);
    steps.begin(name);
  };
  const skipPhase = (name: string, why: string) => {
    log.line(`== ${name}: skipped (${why})`);
    steps.skip(name, why);
  };

  await preflightBase({ base: input.base, arch: model.image.arch, ...(input.shrink !== undefined ? { shrink: input.shrink } : {}) });
  mkdirSync(input.workDir, { recursive: true, mode: 0o700 });
  const image = path.join(input.workDir, "image.img");
  const mnt = path.join(input.workDir, "root");
  const bootDir = path.join(input.workDir, "boot");
  mkdirSync(mnt, { recursive: true });

  // ---- prepare base: the working copy, its partitions, the system settings ----
  log.line(`== prepare base: ${input.base}`);
  steps.begin("prepare base");
  const started = Date.now();
  let lastStatus = 0;
  const prepared = await prepareBase(input.base, image, {
    log,
    signal,
    onProgress: (done, total) => {
      const now = Date.now();
      if (now - lastStatus < 1000 && done !== total) return;
      lastStatus = now;
      steps.status(describeProgress(label, done, total, started));
    },
    onCopy: (size) => steps.status(`copying ${label} (${formatBytes(size)}; sparse, or a reflink where the file system has them)`),
  });
  log.line(`base ${prepared.method} in ${formatDuration(Date.now() - started)}: ${prepared.size} bytes`);
  const layout = await readLayout(image, label);
  let root = layout.root;

  // A first look, read-only, decides on regeneration and growth before anything changes.
  const wanted = stagePackages(input.rendered);
  const facts = await withCleanup(async (scope) => {
    const dev = await attachLoop(image, root.offset, root.size, scope, { log });
    // Later steps check and resize the file system: features this host's e2fsprogs does not know stop the build now, not then.
    const fsck = await tool("e2fsck", ["-n", dev], { what: "reading the root file system's features", log, okCodes: Array.from({ length: 256 }, (_, i) => i) });
    const unsupported = ext4FeaturesProblem(label, fsck.output);
    if (unsupported) throw new PibakeError(unsupported);
    await mountRoot(dev, mnt, scope, log, { readOnly: true });
    return inspectRootfs(mnt);
  });
  checkBaseMatches(facts, model, label);
  checkNeverBooted(facts, label);
  const missing = missingPackages(wanted, facts.installed);
  const regeneration = facts.marker !== undefined && missing.length === 0;
  log.line(`base: ${facts.prettyName}, ${facts.arch}, boot partition at ${facts.bootMount}, ${formatBytes(facts.freeBytes)} free` + (facts.marker ? `, built by pibake ${facts.marker.pibake} on ${facts.marker.builtAt}` : ""));
  log.line(regeneration ? `regeneration: every stage package is installed (${wanted.join(", ")})` : `packages to install: ${missing.join(", ") || "none"}`);
  const nodeRedRoom = model.nodeRed?.install === "build" && !regeneration ? AUTO_FREE_NODE_RED_BUILD : 0;
  const growBy = input.grow === undefined || input.grow === "auto" ? autoGrow(facts.freeBytes, !regeneration, nodeRedRoom) : input.grow;
  if (growBy > 0) {
    steps.status(`growing the root partition by ${formatBytes(growBy)} (${formatBytes(facts.freeBytes)} free)`);
    root = await growImage(image, root, growBy);
    log.line(`root partition grown by ${growBy} bytes to ${root.size}`);
  }

  let marker: ImageMarker | undefined;
  let removedOverlay: string[] = [];
  let zeroed: "fstrim" | "zerofree" | "none" = "none";
  let bootChanges: { changed: string[]; removed: string[] } = { changed: [], removed: [] };
  let systemNotes: string[] = [];
  await withCleanup(async (scope) => {
    const dev = await attachLoop(image, root.offset, root.size, scope, { log });
    if (growBy > 0) {
      // Offline: online growth (EXT4_IOC_RESIZE_FS) is refused in some containers and kernels.
      await checkFileSystem(dev, { log, signal, what: "checking the root file system before growing it" });
      await tool("resize2fs", [dev], { what: "growing the root file system", log, signal });
    }
    await mountRoot(dev, mnt, scope, log);
    await checkCanRun(mnt, model.image.arch, log);

    // The boot partition's files, at /boot/firmware as on the Pi; written back with mtools afterwards.
    mkdirSync(bootDir, { recursive: true, mode: 0o700 });
    const fat = new FatPartition(image, layout.boot.offset, log);
    const bootBefore = await fat.extract(bootDir);
    const bootTarget = path.join(mnt, facts.bootMount);
    mkdirSync(bootTarget, { recursive: true });
    await tool("mount", ["--bind", bootDir, bootTarget], { what: `making the boot partition's files available at ${facts.bootMount}`, log });
    scope.defer(() => unmountTree(bootTarget), `unmount ${bootTarget}`);

    const before = snapshotState(mnt);
    steps.status("hostname, first user, SSH, locale, time zone, keyboard, Wi-Fi country");
    const plan = applySystemSettings(mnt, bootDir, model, input.secrets.userPasswordHash);
    systemNotes = plan.notes;
    for (const n of plan.notes) log.line(`note: ${n}`);
    if (facts.marker?.systemDigest === plan.digest) {
      log.line("system settings: the user, SSH keys, locale and keyboard are as the base's last pibake build left them; the chroot part is not needed");
    } else {
      const systemStage = path.join(input.workDir, "system-stage");
      mkdirSync(path.join(systemStage, "00-system"), { recursive: true, mode: 0o700 });
      writeFileSync(path.join(systemStage, "00-system", "00-run-chroot.sh"), plan.script, { mode: 0o700 });
      await runStage({ stageDir: systemStage, rootfs: mnt, signal, onLine: (l) => onToolLine(l) });
    }

    // Files of the previous overlay that this one no longer has.
    const overlayPaths = input.rendered.overlay.map((f) => f.path);
    if (facts.marker) {
      removedOverlay = facts.marker.overlay.filter((p) => !overlayPaths.includes(p));
      for (const p of removedOverlay) rmSync(path.join(mnt, p), { force: true });
      for (const p of facts.marker.systemFiles ?? []) rmSync(path.join(mnt, p), { force: true });
      if (removedOverlay.length) log.line(`removed files of the previous overlay: ${removedOverlay.join(", ")}`);
    }

    // The rendered stage, as pi-gen runs it.
    const renderDir = path.join(input.workDir, "render");
    writeRendered(renderDir, input.rendered);
    if (regeneration) skipPhase("packages", "already installed: the base is an image pibake made");
    else enterPhase("packages");
    let current = "";
    let overlayStarted = false;
    await runStage({
      stageDir: path.join(renderDir, "stage"),
      rootfs: mnt,
      skipPackages: regeneration,
      aptUpdate: true,
      env: stageEnv(input),
      signal,
      onStep: (event, what) => {
        log.line(`[${event} ${what}]`);
        if (event !== "Begin") return;
        current = what;
        const base = path.basename(what);
        if (/^\d\d-(run|run-chroot)\.sh$/.test(base) && !overlayStarted) {
          overlayStarted = true;
          enterPhase("overlay");
        }
        const sub = path.basename(path.dirname(what));
        if (/^\d\d-packages(-nr)?$/.test(base)) {
          if (!regeneration && stagePackageFile(input.rendered, `${sub}/${base}`)) steps.status(`apt-get install (${sub}/${base}) in the chroot`);
        } else if (/^\d\d-(run|run-chroot)\.sh$|^\d\d-debconf$/.test(base)) steps.status(`${sub}/${base}`);
      },
      onLine: (l) => onToolLine(l),
    }).catch((err: unknown) => {
      if (signal.aborted || !(err instanceof PibakeError)) throw err;
      const base = path.basename(current);
      const where = `${path.basename(path.dirname(current))}/${base}`;
      const what = /packages/.test(base)
        ? `installing the packages of ${where} in the image failed (apt-get in the chroot${process.arch === "arm64" ? "" : ", under qemu-user"}); check the network and the image's apt sources`
        : `${where} failed`;
      throw new PibakeError(`${what}: ${err.message}`);
    });
    if (!overlayStarted) enterPhase("overlay");

    enterPhase("finalize");
    marker = {
      pibake: PIBAKE_VERSION,
      builtAt: new Date().toISOString(),
      engine: "base",
      image: model.image.name,
      release: model.image.release,
      arch: model.image.arch,
      domain: model.tls.domain,
      packages: wanted,
      overlay: overlayPaths,
      systemDigest: plan.digest,
    };
    writeMarker(mnt, marker);
    finalizeRootfs(mnt, before, log);
    bootChanges = await fat.writeBack(bootDir, bootBefore);
    log.line(`boot partition: ${bootChanges.changed.length} file(s) written, ${bootChanges.removed.length} removed`);
    // Free blocks become holes in the image file (loop devices pass discards on as hole punches).
    steps.status("zeroing free blocks");
    const trim = await tool("fstrim", ["-v", mnt], { what: "discarding free blocks", log, okCodes: [0, 1, 32, 64] });
    if (trim.exitCode === 0) zeroed = "fstrim";
  });

  // Unmounted: check, optionally shrink, zero what fstrim could not.
  let shrunk: { from: number; to: number } | undefined;
  await withCleanup(async (scope) => {
    const dev = await attachLoop(image, root.offset, root.size, scope, { log });
    steps.status("checking the root file system (e2fsck -f)");
    await checkFileSystem(dev, { log, signal });
    if (zeroed === "none") {
      if (findProgram("zerofree")) {
        steps.status("zeroing free blocks (zerofree)");
        await tool("zerofree", [dev], { what: "zeroing free blocks", log, signal });
        zeroed = "zerofree";
      } else {
        out.warn("the loop device does not support discard and zerofree is not installed: free blocks are not zeroed, so the compressed image is larger (sudo apt-get install zerofree)");
      }
    }
    if (input.shrink) {
      steps.status("shrinking the root file system (resize2fs)");
      const sb = (await readLayout(image, label)).ext;
      const r = await shrinkFileSystem(dev, sb.blockSize, root.size, { log, signal });
      if (r) shrunk = { from: root.size, to: r.fsBytes };
      else log.line("--shrink: the root file system is already within its margin");
    }
  });
  if (shrunk) {
    root = await truncateImage(image, root, shrunk.to);
    log.line(`shrunk the root partition from ${shrunk.from} to ${root.size} bytes`);
  }
  timings[phase] = (timings[phase] ?? 0) + (Date.now() - phaseStart);
  const size = statSync(image).size;

  return {
    imagePath: image,
    manifest: {
      engine: "base",
      baseImage: label,
      baseSha256: await prepared.sha256,
      baseCompression: prepared.compression,
      baseSize: prepared.size,
      baseSystem: facts.prettyName,
      baseBuiltByPibake: facts.marker ? facts.marker.pibake : false,
      regeneration,
      packagesInstalled: regeneration ? [] : missing,
      packages: wanted,
      rootGrownBy: growBy,
      ...(shrunk ? { rootShrunkTo: root.size } : {}),
      freeBlocksZeroed: zeroed,
      bootPartitionChanges: bootChanges.changed,
      removedOverlayFiles: removedOverlay,
      notes: systemNotes,
      imageSize: size,
      marker: MARKER_PATH,
    },
    timings,
  };

  function onToolLine(line: string): void {
    log.line(line);
    out.verbose(line);
    // apt's progress, at most every 2 seconds (plain logs get one line each).
    const now = Date.now();
    if (now - lastToolStatus >= 2000 && /^(Get:\d+|Unpacking|Setting up|Processing triggers|Fetched)/.test(line)) {
      lastToolStatus = now;
      steps.status(line.length > 100 ? `${line.slice(0, 97)}...` : line);
    }
  }
}

/** Whether the rendered stage file lists any package (an empty list is a step that does nothing). */
function stagePackageFile(rendered: EngineInput["rendered"], rel: string): boolean {
  const f = rendered.stage.find((s) => s.path === rel);
  return !!f && f.content.toString("utf8").replace(/#.*$/gm, "").trim() !== "";
}

/** Sector 0 and the file systems' first bytes: the Raspberry Pi OS checks, with messages that name the image. */
async function readLayout(image: string, label: string): Promise<ReturnType<typeof checkRaspiLayout> & ReturnType<typeof checkFileSystems>> {
  const fh = await fsp.open(image, "r");
  try {
    const { size } = await fh.stat();
    const read = async (pos: number, n: number) => {
      const b = Buffer.alloc(n);
      const { bytesRead } = await fh.read(b, 0, n, pos);
      return b.subarray(0, bytesRead);
    };
    const table = parseMbr(await read(0, SECTOR_SIZE), label);
    const layout = checkRaspiLayout(table, size, label);
    const fs = checkFileSystems(layout, await read(layout.boot.offset, SECTOR_SIZE), await read(layout.root.offset, 2048), label);
    return { ...layout, ...fs };
  } finally {
    await fh.close();
  }
}

async function mountRoot(dev: string, mnt: string, scope: CleanupScope, log: BuildLog, opts: { readOnly?: boolean } = {}): Promise<void> {
  await tool("mount", ["-t", "ext4", ...(opts.readOnly ? ["-o", "ro"] : []), dev, mnt], { what: `mounting the root partition (${dev})`, log });
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
  log.command("chroot", [rootfs, "/bin/true"]);
  const r = await execa("chroot", [rootfs, "/bin/true"], { reject: false, stdin: "ignore", all: true });
  if (r.exitCode !== 0) {
    throw new PibakeError(
      `cannot run the image's ${arch} programs in its chroot (${String(r.all ?? "").trim() || r.shortMessage}): ` +
        `check that qemu-user is registered with binfmt_misc with the F flag (grep flags /proc/sys/fs/binfmt_misc/qemu-*), e.g. sudo apt-get install qemu-user-static binfmt-support`,
    );
  }
}

/** What pi-gen exports to a stage's NN-run.sh, from the config. */
function stageEnv(input: EngineInput): Record<string, string> {
  const m = input.config.model;
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
  machineId: Buffer | undefined;
  dbusMachineId: boolean;
}

function snapshotState(rootfs: string): StateBefore {
  const list = (d: string) => (existsSync(path.join(rootfs, d)) ? readdirSync(path.join(rootfs, d)) : []);
  const machineId = path.join(rootfs, "etc/machine-id");
  return {
    sshHostKeys: new Set(list("etc/ssh").filter((f) => f.startsWith("ssh_host_"))),
    aptLists: list("var/lib/apt/lists").some((f) => f !== "lock" && f !== "partial" && f !== "auxfiles"),
    machineId: existsSync(machineId) ? readFileSync(machineId) : undefined,
    dbusMachineId: existsSync(path.join(rootfs, "var/lib/dbus/machine-id")),
  };
}

/** What usermod, groupmod and chpasswd leave behind: the files as they were, earlier password hashes included. export-image removes them too. */
export const ACCOUNT_BACKUPS = ["passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-"].map((f) => `etc/${f}`);

/**
 * pi-gen's export-image finalise, for what a build adds: apt's downloads and
 * (when the base had none) its lists, logs, and per-machine state that the
 * first boot must create (SSH host keys, machine-id).
 */
function finalizeRootfs(rootfs: string, before: StateBefore, log: BuildLog): void {
  const p = (rel: string) => path.join(rootfs, rel);
  const removeIn = (dir: string, keep: (f: string) => boolean) => {
    if (!existsSync(p(dir))) return;
    for (const f of readdirSync(p(dir))) if (!keep(f)) rmSync(path.join(p(dir), f), { recursive: true, force: true });
  };
  removeIn("var/cache/apt/archives", (f) => f === "lock" || f === "partial");
  removeIn("var/cache/apt", (f) => !f.endsWith(".bin"));
  if (!before.aptLists) removeIn("var/lib/apt/lists", (f) => f === "lock" || f === "partial" || f === "auxfiles");
  const newKeys = existsSync(p("etc/ssh")) ? readdirSync(p("etc/ssh")).filter((f) => f.startsWith("ssh_host_") && !before.sshHostKeys.has(f)) : [];
  for (const k of newKeys) rmSync(p(`etc/ssh/${k}`), { force: true });
  if (before.machineId) writeFileSync(p("etc/machine-id"), before.machineId);
  else rmSync(p("etc/machine-id"), { force: true });
  if (!before.dbusMachineId) rmSync(p("var/lib/dbus/machine-id"), { force: true });
  for (const f of ACCOUNT_BACKUPS) rmSync(p(f), { force: true });
  const truncateLogs = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const f = path.join(dir, e.name);
      if (e.isDirectory()) truncateLogs(f);
      else if (e.isFile()) truncateSync(f, 0);
    }
  };
  truncateLogs(p("var/log"));
  log.line(`finalised: apt caches removed${before.aptLists ? "" : ", apt lists removed"}, logs emptied, machine-id as the base had it, account backups removed${newKeys.length ? `, new SSH host keys removed (${newKeys.join(", ")})` : ""}`);
}

export type { MbrPartition, BaseFacts };
