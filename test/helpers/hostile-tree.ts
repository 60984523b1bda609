import { createHash, randomBytes } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";

/**
 * A base image is someone else's file: its links must lead inside it, never
 * to the build host. A hostile tree moves what pibake touches to a place
 * inside the image named like a host directory (/srv/pibake-canary-…) and
 * links the old path there. That host directory holds canaries with a random
 * marker, which must come through a build unchanged and never reach the image.
 */
export interface HostileTree {
  /** The host directory the links name (and the image's own copy of it, inside the image). */
  readonly canary: string;
  readonly marker: string;
  /** Digest of the host's canary tree: compare before and after. */
  digest(): string;
  remove(): void;
}

/** What a build writes or reads from the host, as a base image might have linked it. */
export const LINKED_DIRS = [
  "etc/default",
  "etc/mosquitto",
  "etc/NetworkManager",
  "var/lib/NetworkManager",
  "etc/cloud",
  "etc/ssh",
  "etc/systemd/system",
  "usr/local/lib",
  "var/lib/dbus",
  "var/lib/pibake",
  "etc/fail2ban",
];
export const LINKED_FILES = ["etc/hosts", "etc/hostname", "etc/machine-id", "etc/ddclient.conf", "etc/nftables.conf"];

/** The canaries on the host, at the absolute paths the image's links name. */
export function hostCanaries(): HostileTree {
  const marker = `canary-${randomBytes(12).toString("hex")}`;
  const canary = `/srv/pibake-canary-${randomBytes(6).toString("hex")}`;
  for (const d of LINKED_DIRS) {
    mkdirSync(path.join(canary, d), { recursive: true });
    writeFileSync(path.join(canary, d, "canary"), `${marker}\n`);
  }
  for (const f of LINKED_FILES) {
    mkdirSync(path.dirname(path.join(canary, f)), { recursive: true });
    writeFileSync(path.join(canary, f), `${marker} ${f}\n`);
  }
  // Files pibake writes inside those directories, present on the host so that an overwrite shows.
  for (const f of ["etc/default/keyboard", "etc/default/ddclient", "etc/default/locale", "etc/mosquitto/passwd", "var/lib/pibake/build.json"])
    writeFileSync(path.join(canary, f), `${marker} ${f}\n`);
  return { canary, marker, digest: () => treeDigest(canary), remove: () => rmSync(canary, { recursive: true, force: true }) };
}

/** Every path, type, mode and content below a directory: what "unchanged" means. */
export function treeDigest(dir: string): string {
  const h = createHash("sha256");
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = lstatSync(p);
      h.update(`${path.relative(dir, p)} ${st.mode} ${st.uid} ${st.gid}\n`);
      if (st.isDirectory()) walk(p);
      else if (st.isSymbolicLink()) h.update(readlinkSync(p));
      else h.update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest("hex");
}

/** The link at `rel` that leads to the image's own copy of the canary directory: absolute, or relative and climbing far beyond the image's root. */
export function linkTarget(canary: string, rel: string, style: "absolute" | "relative"): string {
  const depth = rel.split("/").length - 1;
  // Far more ".." than any host path of a mount has: on the host they reach /, inside the image they stop at its root.
  return style === "absolute" ? path.join(canary, rel) : `${"../".repeat(depth + 30)}${canary.slice(1)}/${rel}`;
}

/** Move each linked path of the tree at `root` into its own copy of the canary directory and link the old path there. */
export function linkAway(root: string, canary: string, style: "absolute" | "relative"): void {
  for (const rel of [...LINKED_DIRS, ...LINKED_FILES]) {
    const inside = path.join(root, canary, rel);
    mkdirSync(path.dirname(inside), { recursive: true });
    const orig = path.join(root, rel);
    if (existsSync(orig) || lstatOrNull(orig)) renameSync(orig, inside);
    else if (LINKED_DIRS.includes(rel)) mkdirSync(inside, { recursive: true });
    else writeFileSync(inside, rel === "etc/hosts" ? "127.0.0.1\tlocalhost\n" : "");
    mkdirSync(path.dirname(orig), { recursive: true });
    symlinkSync(linkTarget(canary, rel, style), orig);
  }
}

/** Turn the links that linkAway made into the other style. */
export function relink(root: string, canary: string, style: "absolute" | "relative"): void {
  for (const rel of [...LINKED_DIRS, ...LINKED_FILES]) {
    const orig = path.join(root, rel);
    rmSync(orig);
    symlinkSync(linkTarget(canary, rel, style), orig);
  }
}

function lstatOrNull(p: string) {
  try {
    return lstatSync(p);
  } catch {
    return null;
  }
}

/** Every regular file below `dir` that holds `needle`. */
export function filesWith(dir: string, needle: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && readFileSync(p).includes(needle)) found.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return found;
}
