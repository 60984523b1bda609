import type { Ext4Volume } from "../../../image/ext4-volume.js";
import { MARKER_PATH, parseDpkgStatus, parseMarker } from "../marker.js";
import { elfArch, firstUserOf, parseOsRelease, type BaseFacts } from "../system.js";
import type { FastBaseFacts } from "./decide.js";
import type { ImageEdit } from "./plan.js";

/** What the fast path decides from, read from the base's root file system (never written). */
export async function inspectVolume(vol: Ext4Volume): Promise<FastBaseFacts & Pick<BaseFacts, "bootTraces">> {
  const text = (p: string) => vol.readText(p);
  const osRelease = parseOsRelease((await text(await vol.resolveLast("/etc/os-release"))) ?? "");
  const bash = await vol.read(await vol.resolveLast("/usr/bin/bash"));
  const marker = parseMarker(await text(`/${MARKER_PATH}`));
  const firstUser = firstUserOf((await text("/etc/passwd")) ?? "");
  const localeGen = await text("/etc/locale.gen");
  const keyboard = await text("/etc/default/keyboard");
  return {
    ...(marker ? { marker } : {}),
    ...(osRelease.VERSION_CODENAME ? { release: osRelease.VERSION_CODENAME } : {}),
    arch: bash ? elfArch(bash.subarray(0, 64)) : "unknown",
    installed: parseDpkgStatus((await text("/var/lib/dpkg/status")) ?? ""),
    ...(firstUser ? { firstUserName: firstUser.name } : {}),
    ...(localeGen !== undefined ? { localeGen } : {}),
    ...(keyboard !== undefined ? { keyboard } : {}),
    bootTraces: await bootTracesOf(vol),
  };
}

/** What only a boot leaves behind, as bootTraces (system.ts) finds it: such an image is refused on every path. */
async function bootTracesOf(vol: Ext4Volume): Promise<string[]> {
  const traces: string[] = [];
  const keys = (await vol.list("/etc/ssh")).filter((f) => /^ssh_host_.*_key$/.test(f)).sort();
  if (keys.length) traces.push(`SSH host keys (${keys.map((k) => `/etc/ssh/${k}`).join(", ")})`);
  if (/^[0-9a-f]{32}\s*$/.test((await vol.readText("/etc/machine-id")) ?? "")) traces.push("a machine id in /etc/machine-id");
  if ((await vol.lstat("/var/lib/cloud/instance")) || (await vol.list("/var/lib/cloud/instances")).length > 0)
    traces.push("cloud-init's instance data (/var/lib/cloud/instances)");
  return traces;
}

/**
 * The directories that are links in the image on the way to a file the edits
 * write or remove, each with the first such file. libext2fs does not write
 * through them reliably; the root path does, inside the image.
 */
export async function linkedDirectories(vol: Ext4Volume, edits: readonly ImageEdit[]): Promise<{ dir: string; file: string }[]> {
  const found = new Map<string, string>();
  for (const e of edits) {
    const dir = await vol.linkedDirectoryOf(e.path);
    if (dir && !found.has(dir)) found.set(dir, e.path);
  }
  return [...found].map(([dir, file]) => ({ dir, file }));
}
