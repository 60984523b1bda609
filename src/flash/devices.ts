/**
 * Block devices as lsblk sees them, and the pure questions asked about them:
 * which are removable, what is mounted on them, how to show them.
 */
import { readFile } from "node:fs/promises";
import { PibakeError } from "../errors.js";
import { formatBytes } from "../ui/output.js";
import { runCommand } from "../host/process.js";
import { listBlockDevicesJson } from "./commands.js";

export const LSBLK_COLUMNS = "NAME,PATH,TYPE,SIZE,RM,HOTPLUG,RO,TRAN,VENDOR,MODEL,SERIAL,MOUNTPOINTS,FSTYPE,LABEL,MAJ:MIN";

export interface BlockDevice {
  name: string;
  path: string;
  /** disk, part, loop, rom, lvm, crypt, raid1, … */
  type: string;
  size: number;
  removable: boolean;
  hotplug: boolean;
  readOnly: boolean;
  /** usb, mmc, sata, nvme, … (only on whole disks) */
  tran?: string;
  vendor?: string;
  model?: string;
  serial?: string;
  /** Where this very device is mounted; "[SWAP]" for active swap. */
  mountpoints: string[];
  fstype?: string;
  label?: string;
  majMin?: string;
  /** Partitions, and devices stacked on them (LVM, dm-crypt). */
  children: BlockDevice[];
}

type Json = Record<string, unknown>;

function str(v: unknown): string | undefined {
  if (typeof v !== "string") return undefined;
  const t = v.trim();
  return t === "" ? undefined : t;
}

// Older lsblk prints booleans as "0"/"1" and sizes as strings.
function bool(v: unknown): boolean {
  return v === true || v === 1 || v === "1";
}

function num(v: unknown): number {
  const n = typeof v === "number" ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}

function toDevice(j: Json): BlockDevice {
  const mps = Array.isArray(j.mountpoints) ? j.mountpoints : j.mountpoint !== undefined ? [j.mountpoint] : [];
  const dev: BlockDevice = {
    name: String(j.name ?? ""),
    path: str(j.path) ?? `/dev/${String(j.name ?? "")}`,
    type: str(j.type) ?? "unknown",
    size: num(j.size),
    removable: bool(j.rm),
    hotplug: bool(j.hotplug),
    readOnly: bool(j.ro),
    mountpoints: mps.filter((m): m is string => typeof m === "string" && m !== ""),
    children: Array.isArray(j.children) ? (j.children as Json[]).map(toDevice) : [],
  };
  const opt = {
    tran: str(j.tran),
    vendor: str(j.vendor),
    model: str(j.model),
    serial: str(j.serial),
    fstype: str(j.fstype),
    label: str(j.label),
    majMin: str(j["maj:min"]),
  };
  for (const [k, v] of Object.entries(opt)) if (v !== undefined) (dev as unknown as Record<string, string>)[k] = v;
  return dev;
}

export function parseLsblk(json: string): BlockDevice[] {
  const parsed = JSON.parse(json) as { blockdevices?: Json[] };
  return (parsed.blockdevices ?? []).map(toDevice);
}

export async function listBlockDevices(): Promise<BlockDevice[]> {
  const r = await runCommand(listBlockDevicesJson(LSBLK_COLUMNS));
  if (r.exitCode !== 0) {
    throw new PibakeError(`cannot list block devices with lsblk: ${r.output.trim() || `exit ${r.exitCode ?? r.signal}`}`);
  }
  return parseLsblk(String(r.stdout));
}

/** Every device in the trees, parents before children. */
export function flatten(devs: BlockDevice[]): BlockDevice[] {
  return devs.flatMap((d) => [d, ...flatten(d.children)]);
}

/** The top-level device a path or maj:min belongs to, and the node itself. */
export function findDevice(devs: BlockDevice[], key: { path?: string; majMin?: string }): { node: BlockDevice; top: BlockDevice } | undefined {
  for (const top of devs) {
    for (const node of flatten([top])) {
      if ((key.path && node.path === key.path) || (key.majMin && node.majMin === key.majMin)) return { node, top };
    }
  }
  return undefined;
}

export interface Mounted {
  device: string;
  mountpoint: string;
}

/** What is mounted on the device or anything on it, swap included. */
export function mountsOf(dev: BlockDevice): Mounted[] {
  return flatten([dev]).flatMap((d) => d.mountpoints.map((m) => ({ device: d.path, mountpoint: m })));
}

/**
 * A card reader, USB stick or SD slot. Built-in SD slots (mmc) often do not
 * set the removable flag, and USB disks may only be marked hot-pluggable.
 */
export function isRemovable(dev: BlockDevice): boolean {
  return dev.removable || dev.hotplug || dev.tran === "usb" || dev.tran === "mmc";
}

/** The devices offered when no DEVICE is named: removable disks with a medium in them. */
export function flashCandidates(devs: BlockDevice[]): BlockDevice[] {
  return devs.filter((d) => d.type === "disk" && isRemovable(d) && d.size > 0);
}

export function describeDevice(dev: BlockDevice): string {
  const name = [dev.vendor, dev.model].filter(Boolean).join(" ") || (dev.type === "loop" ? "loop device" : "unknown model");
  const bits = [formatBytes(dev.size), name, dev.tran ?? (dev.type === "disk" || dev.type === "loop" ? undefined : dev.type)];
  if (dev.readOnly) bits.push("read-only");
  return `${dev.path} (${bits.filter(Boolean).join(", ")})`;
}

export function describeMounts(mounts: Mounted[]): string {
  return mounts.map((m) => (m.mountpoint === "[SWAP]" ? `${m.device} as swap` : `${m.device} on ${m.mountpoint}`)).join(", ");
}

/** One line per device for the chooser: number, path, size, model, transport, mounts. */
export function formatDeviceTable(devs: BlockDevice[]): string[] {
  const rows = devs.map((d, i) => [
    `${i + 1})`,
    d.path,
    formatBytes(d.size),
    [d.vendor, d.model].filter(Boolean).join(" ") || "-",
    d.tran ?? d.type,
    mountsOf(d).length ? `mounted: ${describeMounts(mountsOf(d))}` : "not mounted",
  ]);
  const widths = rows.reduce<number[]>((w, r) => r.map((c, i) => Math.max(w[i] ?? 0, c.length)), []);
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  "));
}

/** Lines describing what is on a disk now, for the "about to destroy" summary. */
export function describeContents(dev: BlockDevice): string[] {
  const parts = dev.children.filter((c) => c.type === "part");
  const show = (d: BlockDevice) => {
    const bits = [formatBytes(d.size), d.fstype, d.label ? `"${d.label}"` : undefined];
    const m = mountsOf(d);
    if (m.length) bits.push(`mounted: ${describeMounts(m)}`);
    return `${d.path}: ${bits.filter(Boolean).join(", ")}`;
  };
  if (parts.length) return parts.map(show);
  if (dev.fstype || dev.mountpoints.length) return [show(dev)];
  return [];
}

/** Device paths in /proc/swaps (lsblk also marks them, this covers what it cannot see). */
export async function activeSwaps(): Promise<string[]> {
  try {
    const text = await readFile("/proc/swaps", "utf8");
    return text
      .split("\n")
      .slice(1)
      .map((l) => l.split(/\s+/)[0] ?? "")
      .filter((p) => p.startsWith("/dev/"));
  } catch {
    return [];
  }
}

/** Linux dev_t to "major:minor", as lsblk prints it. */
export function majMinOf(dev: number | bigint): string {
  const d = BigInt(dev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}
