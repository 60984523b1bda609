import type { ImageRoot } from "../../host/image-root.js";
import { stagePackages } from "../../render/stage.js";
import type { Rendered } from "../../render/index.js";
import { systemDigest, type SystemSettings } from "../../render/system.js";
import type { Model } from "../../config/model.js";
import { PIBAKE_VERSION } from "../../version.js";
import { inImageWork, type InImageWork } from "./in-image.js";

/**
 * What pibake leaves in every image it builds from a base, so that a later
 * `--base` build of that image knows it is one of its own: which packages
 * the stage installed and which files the overlay wrote (the next overlay
 * removes those it no longer has). No secret is in it.
 */
export const MARKER_PATH = "var/lib/pibake/build.json";

export interface ImageMarker {
  pibake: string;
  builtAt: string;
  engine: "base";
  image: string;
  release: string;
  arch: string;
  domain: string;
  packages: string[];
  overlay: string[];
  /** Files that earlier versions wrote for the system settings besides the overlay (a cloud-init drop-in); a regeneration removes them, as the overlay now carries that. */
  systemFiles?: string[];
  /** What the system settings' chroot script applied (SystemPlan.digest). */
  systemDigest?: string;
  /** The system settings that digest is of (no secret in them): the fast path compares them field by field. */
  system?: SystemSettings;
  /** What the stage ran inside the image (in-image.ts): a later build whose render runs the same can write its files without running anything. */
  inImage?: InImageWork;
}

export function readMarker(root: ImageRoot): ImageMarker | undefined {
  return parseMarker(root.readText(MARKER_PATH));
}

/** The marker's record from its text; undefined when there is none or it is not one. */
export function parseMarker(text: string | undefined): ImageMarker | undefined {
  if (text === undefined) return undefined;
  try {
    const m = JSON.parse(text) as ImageMarker;
    return typeof m.pibake === "string" && Array.isArray(m.packages) && Array.isArray(m.overlay) ? m : undefined;
  } catch {
    return undefined;
  }
}

export function writeMarker(root: ImageRoot, marker: ImageMarker): void {
  root.write(MARKER_PATH, markerText(marker), 0o644);
}

export function markerText(marker: ImageMarker): string {
  return JSON.stringify(marker, null, 2) + "\n";
}

/** The record of a build from this render, the same whichever path wrote the image. */
export function markerOf(model: Model, rendered: Rendered, builtAt: Date): ImageMarker {
  return {
    pibake: PIBAKE_VERSION,
    builtAt: builtAt.toISOString(),
    engine: "base",
    image: model.image.name,
    release: model.image.release,
    arch: model.image.arch,
    domain: model.tls.domain,
    packages: stagePackages(rendered),
    overlay: rendered.overlay.map((f) => f.path),
    systemDigest: systemDigest(rendered.system),
    system: rendered.system,
    inImage: inImageWork(rendered),
  };
}

/** The packages dpkg has fully installed, each with its Installed-Size (KiB), from /var/lib/dpkg/status (read on the host: no qemu needed). */
export function parseDpkgSizes(text: string): Map<string, number> {
  const installed = new Map<string, number>();
  for (const para of text.split(/\n\s*\n/)) {
    const name = /^Package:\s*(\S+)/m.exec(para)?.[1];
    const status = /^Status:\s*(.+)$/m.exec(para)?.[1]?.trim();
    if (name && status === "install ok installed") installed.set(name, Number(/^Installed-Size:\s*(\d+)/m.exec(para)?.[1] ?? 0));
  }
  return installed;
}

/** Names of the packages dpkg has fully installed. */
export function parseDpkgStatus(text: string): Set<string> {
  return new Set(parseDpkgSizes(text).keys());
}

export function installedPackages(root: ImageRoot): Set<string> {
  return parseDpkgStatus(root.readText("/var/lib/dpkg/status") ?? "");
}

/** Installed-Size (KiB) of each package dpkg has fully installed. */
export function installedSizes(root: ImageRoot): Map<string, number> {
  return parseDpkgSizes(root.readText("/var/lib/dpkg/status") ?? "");
}

export interface PackagesAdded {
  names: string[];
  installedBytes: number;
  /** The base's own packages, the figure the added ones stand beside. */
  base: { count: number; installedBytes: number };
}

/** What a build added to the base: the packages dpkg has now and did not before, and their installed size. */
export function packagesAdded(before: Set<string>, after: Map<string, number>): PackagesAdded {
  const bytes = (names: Iterable<string>) => [...names].reduce((sum, n) => sum + (after.get(n) ?? 0) * 1024, 0);
  const names = [...after.keys()].filter((n) => !before.has(n)).sort();
  return { names, installedBytes: bytes(names), base: { count: before.size, installedBytes: bytes(before) } };
}

/** A package name may carry an architecture (`foo:arm64`) or a version (`foo=1.2`); dpkg's status has the bare name. */
export function missingPackages(wanted: string[], installed: Set<string>): string[] {
  return wanted.filter((p) => !installed.has(p.replace(/[:=].*$/, "")));
}
