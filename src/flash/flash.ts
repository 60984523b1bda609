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
import { checkTarget, isNamingMistake, type SystemInfo, type Target } from "./checks.js";
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
export async function resolveTarget(
  name: string,
  inputs: { path: string; what: string }[],
  devices: () => Promise<BlockDevice[]>,
): Promise<Target> {
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

export async function runFlash(args: FlashArgs, io: FlashIO = defaultFlashIO()): Promise<FlashSummary> {
  // One scope from the start, so that Ctrl-C at a question or during the checks also ends cleanly.
  return withCleanup(async (scope) => {
    const verify = args.verify !== false;
    const image = path.resolve(args.image);
    const ist = await statOrUndefined(image);
    if (!ist) throw new PibakeError(`image ${args.image} does not exist`, 2);
    if (!ist.isFile()) throw new PibakeError(`image ${args.image} is not a regular file`, 2);
    const info = await probeImage(image);
    await checkFlashSource(image, args.image, info);

    let bmap: { path: string; bmap: Bmap } | undefined;
    if (typeof args.bmap === "string" && !(await statOrUndefined(path.resolve(args.bmap)))) throw new PibakeError(`bmap ${args.bmap} does not exist`, 2);
    const bmapPath = typeof args.bmap === "string" ? path.resolve(args.bmap) : args.bmap === false ? undefined : await findBmapFor(image);
    if (bmapPath) bmap = { path: bmapPath, bmap: await readBmap(bmapPath) };
    if (bmap && info.size !== undefined && info.size !== bmap.bmap.imageSize) {
      throw new PibakeError(
        `${bmap.path} describes an image of ${bmap.bmap.imageSize} bytes but ${args.image} holds ${info.size}: ` +
          `the bmap belongs to another image; pass --no-bmap, or --bmap with the right file`,
      );
    }
    const imageSize = bmap?.bmap.imageSize ?? info.size;

    let cachedDevices: Promise<BlockDevice[]> | undefined;
    const devices = () => (cachedDevices ??= listBlockDevices());
    let prompter: Prompter | undefined;
    const getPrompter = () => {
      if (!prompter) {
        const p = createPrompter({ input: io.input, output: io.prompt }, scope.signal);
        scope.defer(() => p.close(), "closing the prompt");
        prompter = p;
      }
      return prompter;
    };

    let device = args.device;
    if (!device) {
      if (!io.interactive) {
        throw new PibakeError("no DEVICE given, and no terminal to choose one on: name it, e.g. pibake flash IMAGE /dev/sdX (lsblk lists the disks)", 2);
      }
      const candidates = flashCandidates(await devices());
      if (candidates.length === 0) {
        throw new PibakeError("no removable disk found: insert the SD card (or its reader) and try again, or name the device");
      }
      io.prompt.write(`Removable disks:\n${formatDeviceTable(candidates).map((l) => `  ${l}\n`).join("")}`);
      device = candidates[await chooseIndex(getPrompter(), io.prompt, candidates.length)]!.path;
    }

    const inputs = [{ path: image, what: "image" }, ...(bmap ? [{ path: bmap.path, what: "bmap" }] : [])];
    const target = await resolveTarget(device, inputs, devices);
    const system = await systemInfo();
    system.inputs = await Promise.all(inputs.map(async (i) => ({ what: i.what, majMin: majMinOf((await fsp.stat(i.path)).dev) })));
    const check = checkTarget(target, imageSize, { force: args.force === true, unmount: args.unmount === true }, system);
    if (check.refusals.length > 0) throw new PibakeError(check.refusals.join("\n  "), isNamingMistake(target) ? 2 : 1);

    const targetPath = target.path;
    const kind = target.kind === "block" ? "block" : "file";
    const destroys = target.kind === "block" || (target.kind === "file" && target.exists);
    io.out.info([imageLine(image, info, imageSize, bmap), ...describeTarget(target, check.unmount)].join("\n"));
    if (destroys && !args.yes) {
      if (!io.interactive) throw new PibakeError(`no terminal to confirm on: pass --yes to write to ${targetPath} without asking`, 2);
      const answer = await getPrompter().ask(`Write the image to ${targetPath}? [y/N] `);
      if (!isYes(answer)) throw new PibakeError("cancelled: nothing was written");
    }
    prompter?.close();

    scope.throwIfInterrupted();
    if (check.unmount.length) await unmountAll(check.unmount, io.out);
    scope.throwIfInterrupted();
    return await writeAndVerify({ image, info, imageSize, bmap, targetPath, kind, verify, io }, scope);
  });
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

async function writeAndVerify(p: WritePlan, scope: CleanupScope): Promise<FlashSummary> {
  const { io, targetPath } = p;
  let handle: TargetHandle | undefined = await openTarget(targetPath, p.kind);
  scope.defer(() => handle && closeTarget(handle), `closing ${targetPath}`);
  let source: ImageSource;
  if (p.info.compression === "none") source = { kind: "file", path: p.image };
  else {
    const reader = await openImageReader(p.image);
    scope.defer(() => reader.close(), "stopping the decompressor");
    source = { kind: "stream", stream: reader.stream };
  }

  const total = p.bmap ? mappedBytes(p.bmap.bmap) : (p.imageSize ?? p.info.sizeHint);
  const wp = createProgress(io.out, "Writing", total, io.live);
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
    throw incomplete(scope.signal.aborted ? scope.signal.reason : err, targetPath, written, total);
  }
  const writeMs = wp.elapsed();
  io.out.info(
    `Wrote ${formatBytes(result.written)} to ${targetPath} in ${formatElapsed(writeMs)} (${formatRate((result.written * 1000) / Math.max(1, writeMs))})` +
      (result.direct ? "" : ", through the page cache"),
  );

  let verifyMs = 0;
  if (p.verify) {
    if (!handle.direct && p.kind === "block") await flushDeviceCache(targetPath);
    const vp = createProgress(io.out, "Verifying", result.written, io.live);
    try {
      await verifyTarget(handle, result.segments, {
        ...(p.bmap?.bmap.checksumType ? { checksumType: p.bmap.bmap.checksumType } : {}),
        signal: scope.signal,
        onProgress: (n) => vp.update(n),
      });
    } catch (err) {
      if (scope.signal.aborted) {
        const reason = scope.signal.reason as PibakeError;
        throw new PibakeError(`${reason.message} during verification: ${targetPath} was written completely but is not verified`, reason.exitCode);
      }
      throw err;
    }
    verifyMs = vp.elapsed();
    io.out.info(`Verified ${formatBytes(result.written)} in ${formatElapsed(verifyMs)}: ${targetPath} matches the image`);
  }

  // Our exclusive handle would make the kernel refuse to rescan the partitions.
  const h = handle;
  handle = undefined;
  await closeTarget(h);
  if (p.kind === "block") {
    const warning = await rereadPartitions(targetPath);
    if (warning) io.out.warn(warning);
    io.out.info(`Done: ${targetPath} can be removed.`);
  } else {
    io.out.info(`Done: ${targetPath} holds the image.`);
  }
  return {
    target: targetPath,
    kind: p.kind,
    imageSize: result.imageSize,
    written: result.written,
    usedBmap: p.bmap !== undefined,
    direct: result.direct,
    verified: p.verify,
    writeMs,
    verifyMs,
  };
}
