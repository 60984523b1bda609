/**
 * `pibake flash IMAGE [DEVICE]`: choose and check the target, confirm, then
 * write, verify and hand the card back. The decisions are pure functions
 * (devices.ts, checks.ts); this file sequences them around the writer.
 */
import { promises as fsp, type Stats } from "node:fs";
import path from "node:path";
import { InterruptedError, PibakeError } from "../errors.js";
import { withCleanup, type CleanupScope } from "../cleanup.js";
import { byteRanges, findBmapFor, mappedBytes, readBmap, type Bmap } from "../image/bmap.js";
import { openImageReader, probeImage, type ImageInfo } from "../image/compression.js";
import { canRedraw, createOutput, formatBytes, type Output } from "../ui/output.js";
import { checkTarget, isNamingMistake, type TargetVerdict, type SystemInfo, type Target } from "./checks.js";
import { checkFlashSource } from "./source.js";
import {
  activeSwaps,
  describeContents,
  describeDevice,
  describeMounts,
  findDevice,
  flashCandidates,
  formatDeviceTable,
  listBlockDevices,
  majMinOf,
  type BlockDevice,
  type Mounted,
} from "./devices.js";
import { createProgress, formatElapsed, formatRate } from "./progress.js";
import { createPrompter, isYes, type Prompter } from "../ui/prompt.js";
import { chooseIndex } from "./prompt.js";
import { unmount } from "../host/commands.js";
import { runCommand } from "../host/process.js";
import {
  closeTarget,
  flushDeviceCache,
  openTarget,
  rereadPartitions,
  syncTarget,
  verifyTarget,
  writeImage,
  type ImageSource,
  type TargetHandle,
  type WriteResult,
} from "./writer.js";

export interface FlashArgs {
  image: string;
  device?: string;
  yes?: boolean;
  force?: boolean;
  unmount?: boolean;
  /** Read back and compare (default true). */
  verify?: boolean;
  /** A bmap file, false to ignore one beside the image, true/undefined to look for one. */
  bmap?: boolean | string;
}

export interface FlashIO {
  out: Output;
  /** Where questions and the device list go. */
  prompt: NodeJS.WritableStream;
  input: NodeJS.ReadableStream;
  /** Whether there is someone to ask. */
  interactive: boolean;
  /** Whether status lines replace each other (a terminal). */
  live: boolean;
}

export function defaultFlashIO(): FlashIO {
  const interactive = process.stdin.isTTY === true && process.stderr.isTTY === true;
  return {
    out: createOutput(),
    prompt: process.stderr,
    input: process.stdin,
    interactive,
    live: canRedraw(process.stderr),
  };
}

export interface FlashSummary {
  target: string;
  kind: "block" | "file";
  imageSize: number;
  written: number;
  usedBmap: boolean;
  direct: boolean;
  verified: boolean;
  writeMs: number;
  verifyMs: number;
}

/** The running system's disks, as far as stat and /proc tell. */
export async function systemInfo(): Promise<SystemInfo> {
  const root = await fsp.stat("/");
  return { rootMajMin: majMinOf(root.dev), swaps: await activeSwaps() };
}

async function statOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await fsp.stat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new PibakeError(`cannot look at ${p}: ${(err as Error).message}`);
  }
}

/** What the named target is, for the checks. */
export async function resolveTarget(name: string, inputs: { path: string; what: string }[], devices: () => Promise<BlockDevice[]>): Promise<Target> {
  const abs = path.resolve(name);
  const st = await statOrUndefined(abs);
  if (!st) {
    const parent = await statOrUndefined(path.dirname(abs));
    return { kind: "missing", path: name, parentExists: parent?.isDirectory() === true };
  }
  if (st.isBlockDevice()) {
    // Symlinks such as /dev/disk/by-id/… lead to the kernel's name; maj:min settles the rest.
    const real = await fsp.realpath(abs);
    const devs = await devices();
    const found = findDevice(devs, { path: real }) ?? findDevice(devs, { majMin: majMinOf(st.rdev) });
    if (!found) return { kind: "other", path: name, what: "a block device that lsblk does not list" };
    return { kind: "block", path: found.node.path, node: found.node, top: found.top };
  }
  if (st.isFile()) {
    for (const input of inputs) {
      const ist = await statOrUndefined(input.path);
      if (ist && ist.dev === st.dev && ist.ino === st.ino) return { kind: "file", path: name, exists: true, sameAsInput: input.what };
    }
    return { kind: "file", path: name, exists: true };
  }
  const what = st.isDirectory() ? "a directory" : st.isCharacterDevice() ? "a character device" : "a special file";
  return { kind: "other", path: name, what };
}

function imageLine(image: string, info: ImageInfo, size: number | undefined, bmap?: { path: string; bmap: Bmap }): string {
  const bits = [info.compression === "none" ? "raw" : info.compression];
  if (info.entry) bits.push(`member ${info.entry}`);
  bits.push(size !== undefined ? formatBytes(size) : info.sizeHint !== undefined ? `about ${formatBytes(info.sizeHint)}` : "size unknown until read");
  if (bmap) {
    const mapped = mappedBytes(bmap.bmap);
    bits.push(`${path.basename(bmap.path)} maps ${formatBytes(mapped)} (${((mapped * 100) / Math.max(1, bmap.bmap.imageSize)).toFixed(0)}%)`);
  } else bits.push("no bmap: the whole image is written");
  return `Image:   ${image} (${bits.join(", ")})`;
}

/** What is about to be destroyed, in words. */
export function describeTarget(target: Target, unmount: Mounted[]): string[] {
  if (target.kind === "block") {
    const lines = [`Target:  ${describeDevice(target.node)}`];
    for (const c of describeContents(target.node)) lines.push(`         ${c}`);
    if (unmount.length) lines.push(`         to be unmounted first: ${describeMounts(unmount)}`);
    lines.push(`Everything on ${target.node.path} will be destroyed.`);
    return lines;
  }
  if (target.kind === "file" && target.exists) return [`Target:  ${target.path} (an existing file: it will be overwritten)`];
  return [`Target:  ${target.path} (a new file)`];
}

function incomplete(err: unknown, target: string, written: number, total: number | undefined): unknown {
  const done = `${formatBytes(written)}${total !== undefined ? ` of ${formatBytes(total)}` : ""} written`;
  if (err instanceof InterruptedError) {
    return new PibakeError(`${err.message}: ${target} is incomplete (${done}) and will not boot: flash it again before using it`, err.exitCode);
  }
  if (err instanceof PibakeError) {
    return err.message.includes("incomplete") ? err : new PibakeError(`${err.message}; ${target} is incomplete (${done})`, err.exitCode);
  }
  // System errors (reading the image, say) are expected failures; anything else is a bug and keeps its stack.
  if (err instanceof Error && "code" in err) return new PibakeError(`${err.message}; ${target} is incomplete (${done})`);
  return err;
}

async function unmountAll(mounts: Mounted[], out: Output): Promise<void> {
  // Deepest mount points first, so that nested mounts come off before their parents.
  for (const m of [...mounts].sort((a, b) => b.mountpoint.length - a.mountpoint.length)) {
    const r = await runCommand(unmount(m.mountpoint));
    if (r.exitCode !== 0) {
      const why = r.output.trim() || `exit ${r.exitCode ?? r.signal}`;
      throw new PibakeError(`cannot unmount ${m.device} from ${m.mountpoint} (${why}): close what uses it and try again; nothing was written`);
    }
    out.info(`Unmounted ${m.device} from ${m.mountpoint}`);
  }
}

/**
 * One flash from the command line: the image and its bmap, the target and
 * what the checks found. The steps run in order, each a function of this
 * record, and fill in what the next one needs.
 */
interface FlashRun {
  readonly args: FlashArgs;
  readonly io: FlashIO;
  readonly scope: CleanupScope;
  readonly image: string;
  /** The block devices, listed once, when first needed. */
  readonly devices: () => Promise<BlockDevice[]>;
  /** The prompt, opened for the first question and closed before writing. */
  readonly prompt: { get(): Prompter; close(): void };
  info?: ImageInfo;
  bmap?: { path: string; bmap: Bmap } | undefined;
  imageSize?: number | undefined;
  target?: Target;
  check?: TargetVerdict;
}

export async function runFlash(args: FlashArgs, io: FlashIO = defaultFlashIO()): Promise<FlashSummary> {
  // One scope from the start, so that Ctrl-C at a question or during the checks also ends cleanly.
  return withCleanup(async (scope) => {
    let cachedDevices: Promise<BlockDevice[]> | undefined;
    const f: FlashRun = {
      args,
      io,
      scope,
      image: path.resolve(args.image),
      devices: () => (cachedDevices ??= listBlockDevices()),
      prompt: lazyPrompt(io, scope),
    };
    await checkImage(f);
    await findBmap(f);
    const device = args.device || (await chooseDevice(f));
    await checkTheTarget(f, device);
    await confirmWrite(f);
    f.prompt.close();

    scope.throwIfInterrupted();
    if (f.check!.unmount.length) await unmountAll(f.check!.unmount, io.out);
    scope.throwIfInterrupted();
    const kind = f.target!.kind === "block" ? "block" : "file";
    return await writeAndVerify(
      { image: f.image, info: f.info!, imageSize: f.imageSize, bmap: f.bmap, targetPath: f.target!.path, kind, verify: args.verify !== false, io },
      scope,
    );
  });
}

/** A prompt opened on first use, closed with the scope or before writing, whichever comes first. */
function lazyPrompt(io: FlashIO, scope: CleanupScope): { get(): Prompter; close(): void } {
  let prompter: Prompter | undefined;
  return {
    get: () => {
      if (!prompter) {
        const p = createPrompter({ input: io.input, output: io.prompt }, scope.signal);
        scope.defer(() => p.close(), "closing the prompt");
        prompter = p;
      }
      return prompter;
    },
    close: () => prompter?.close(),
  };
}

/** The image is a regular file that can be flashed: what it holds and how large it unpacks. */
async function checkImage(f: FlashRun): Promise<void> {
  const ist = await statOrUndefined(f.image);
  if (!ist) throw new PibakeError(`image ${f.args.image} does not exist`, 2);
  if (!ist.isFile()) throw new PibakeError(`image ${f.args.image} is not a regular file`, 2);
  f.info = await probeImage(f.image);
  await checkFlashSource(f.image, f.args.image, f.info);
}

/** The bmap named by --bmap, or the one beside the image unless --no-bmap; it must describe an image of this size. */
async function findBmap(f: FlashRun): Promise<void> {
  const { args } = f;
  const info = f.info!;
  if (typeof args.bmap === "string" && !(await statOrUndefined(path.resolve(args.bmap)))) throw new PibakeError(`bmap ${args.bmap} does not exist`, 2);
  const bmapPath = typeof args.bmap === "string" ? path.resolve(args.bmap) : args.bmap === false ? undefined : await findBmapFor(f.image);
  if (bmapPath) f.bmap = { path: bmapPath, bmap: await readBmap(bmapPath) };
  if (f.bmap && info.size !== undefined && info.size !== f.bmap.bmap.imageSize) {
    throw new PibakeError(
      `${f.bmap.path} describes an image of ${f.bmap.bmap.imageSize} bytes but ${args.image} holds ${info.size}: ` +
        `the bmap belongs to another image; pass --no-bmap, or --bmap with the right file`,
    );
  }
  f.imageSize = f.bmap?.bmap.imageSize ?? info.size;
}

/** No DEVICE given: the user picks one of the removable disks, when there is a terminal to ask on. */
async function chooseDevice(f: FlashRun): Promise<string> {
  const { io } = f;
  if (!io.interactive) {
    throw new PibakeError("no DEVICE given, and no terminal to choose one on: name it, e.g. pibake flash IMAGE /dev/sdX (lsblk lists the disks)", 2);
  }
  const candidates = flashCandidates(await f.devices());
  if (candidates.length === 0) {
    throw new PibakeError("no removable disk found: insert the SD card (or its reader) and try again, or name the device");
  }
  io.prompt.write(
    `Removable disks:\n${formatDeviceTable(candidates)
      .map((l) => `  ${l}\n`)
      .join("")}`,
  );
  return candidates[await chooseIndex(f.prompt.get(), io.prompt, candidates.length)]!.path;
}

/** What the device is, and whether it may be written: every refusal at once. */
async function checkTheTarget(f: FlashRun, device: string): Promise<void> {
  const inputs = [{ path: f.image, what: "image" }, ...(f.bmap ? [{ path: f.bmap.path, what: "bmap" }] : [])];
  const target = await resolveTarget(device, inputs, f.devices);
  const system = await systemInfo();
  system.inputs = await Promise.all(inputs.map(async (i) => ({ what: i.what, majMin: majMinOf((await fsp.stat(i.path)).dev) })));
  const check = checkTarget(target, f.imageSize, { force: f.args.force === true, unmount: f.args.unmount === true }, system);
  if (check.refusals.length > 0) throw new PibakeError(check.refusals.join("\n  "), isNamingMistake(target) ? 2 : 1);
  f.target = target;
  f.check = check;
}

/** Say what is written where; a target that holds something is overwritten only with --yes or a yes. */
async function confirmWrite(f: FlashRun): Promise<void> {
  const { io, args } = f;
  const target = f.target!;
  const destroys = target.kind === "block" || (target.kind === "file" && target.exists);
  io.out.info([imageLine(f.image, f.info!, f.imageSize, f.bmap), ...describeTarget(target, f.check!.unmount)].join("\n"));
  if (destroys && !args.yes) {
    if (!io.interactive) throw new PibakeError(`no terminal to confirm on: pass --yes to write to ${target.path} without asking`, 2);
    const answer = await f.prompt.get().ask(`Write the image to ${target.path}? [y/N] `);
    if (!isYes(answer)) throw new PibakeError("cancelled: nothing was written");
  }
}

interface WritePlan {
  image: string;
  info: ImageInfo;
  imageSize: number | undefined;
  bmap: { path: string; bmap: Bmap } | undefined;
  targetPath: string;
  kind: "block" | "file";
  verify: boolean;
  io: FlashIO;
}

/** The write under way: the target's handle until it is handed back, and what writing found. */
interface Writing {
  readonly plan: WritePlan;
  readonly scope: CleanupScope;
  /** Open until handed back; on failure the scope closes it. */
  handle: TargetHandle | undefined;
  result?: WriteResult;
  writeMs: number;
  verifyMs: number;
}

async function writeAndVerify(p: WritePlan, scope: CleanupScope): Promise<FlashSummary> {
  const w: Writing = { plan: p, scope, handle: undefined, writeMs: 0, verifyMs: 0 };
  w.handle = await openTarget(p.targetPath, p.kind);
  scope.defer(() => w.handle && closeTarget(w.handle), `closing ${p.targetPath}`);
  const source = await openSource(w);
  await writeToTarget(w, source);
  if (p.verify) await verifyWritten(w);
  await handBack(w);
  const result = w.result!;
  return {
    target: p.targetPath,
    kind: p.kind,
    imageSize: result.imageSize,
    written: result.written,
    usedBmap: p.bmap !== undefined,
    direct: result.direct,
    verified: p.verify,
    writeMs: w.writeMs,
    verifyMs: w.verifyMs,
  };
}

/** A raw image is read as a file; a compressed one through its decompressor, stopped with the scope. */
async function openSource(w: Writing): Promise<ImageSource> {
  const p = w.plan;
  if (p.info.compression === "none") return { kind: "file", path: p.image };
  const reader = await openImageReader(p.image);
  w.scope.defer(() => reader.close(), "stopping the decompressor");
  return { kind: "stream", stream: reader.stream };
}

/** The image (only its mapped ranges with a bmap) onto the target, synced; a failure says how much was written. */
async function writeToTarget(w: Writing, source: ImageSource): Promise<void> {
  const { plan: p, scope } = w;
  const handle = w.handle!;
  const total = p.bmap ? mappedBytes(p.bmap.bmap) : (p.imageSize ?? p.info.sizeHint);
  const wp = createProgress(p.io.out, "Writing", total, p.io.live);
  let written = 0;
  let result;
  try {
    result = await writeImage({
      source,
      target: handle,
      ...(p.bmap ? { ranges: byteRanges(p.bmap.bmap), blockSize: p.bmap.bmap.blockSize } : {}),
      ...(p.imageSize !== undefined ? { imageSize: p.imageSize } : {}),
      hash: p.verify,
      ...(p.bmap?.bmap.checksumType ? { checksumType: p.bmap.bmap.checksumType } : {}),
      signal: scope.signal,
      onProgress: (n) => {
        written = n;
        wp.update(n);
      },
    });
    await syncTarget(handle);
  } catch (err) {
    throw incomplete(scope.signal.aborted ? scope.signal.reason : err, p.targetPath, written, total);
  }
  w.result = result;
  w.writeMs = wp.elapsed();
  p.io.out.info(
    `Wrote ${formatBytes(result.written)} to ${p.targetPath} in ${formatElapsed(w.writeMs)} (${formatRate((result.written * 1000) / Math.max(1, w.writeMs))})` +
      (result.direct ? "" : ", through the page cache"),
  );
}

/** Read back what was written and compare it with what was meant to be; the device's cache is flushed first when the writes went through it. */
async function verifyWritten(w: Writing): Promise<void> {
  const { plan: p, scope } = w;
  const handle = w.handle!;
  const result = w.result!;
  if (!handle.direct && p.kind === "block") await flushDeviceCache(p.targetPath);
  const vp = createProgress(p.io.out, "Verifying", result.written, p.io.live);
  try {
    await verifyTarget(handle, result.segments, {
      ...(p.bmap?.bmap.checksumType ? { checksumType: p.bmap.bmap.checksumType } : {}),
      signal: scope.signal,
      onProgress: (n) => vp.update(n),
    });
  } catch (err) {
    if (scope.signal.aborted) {
      const reason = scope.signal.reason as PibakeError;
      throw new PibakeError(`${reason.message} during verification: ${p.targetPath} was written completely but is not verified`, reason.exitCode);
    }
    throw err;
  }
  w.verifyMs = vp.elapsed();
  p.io.out.info(`Verified ${formatBytes(result.written)} in ${formatElapsed(w.verifyMs)}: ${p.targetPath} matches the image`);
}

/** The target closed, and for a card its partitions read again so that it can be removed. */
async function handBack(w: Writing): Promise<void> {
  const p = w.plan;
  // Our exclusive handle would make the kernel refuse to rescan the partitions.
  const h = w.handle!;
  w.handle = undefined;
  await closeTarget(h);
  if (p.kind === "block") {
    const warning = await rereadPartitions(p.targetPath);
    if (warning) p.io.out.warn(warning);
    p.io.out.info(`Done: ${p.targetPath} can be removed.`);
  } else {
    p.io.out.info(`Done: ${p.targetPath} holds the image.`);
  }
}
