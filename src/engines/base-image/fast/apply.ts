import { PibakeError } from "../../../errors.js";
import type { Ext4Volume } from "../../../image/ext4-volume.js";
import type { ImageEdit, Owner } from "./plan.js";

/** Names to ids, from the image's own /etc/passwd and /etc/group: the ids of the image, not of the machine that builds it. */
export interface ImageAccounts {
  users: Map<string, number>;
  groups: Map<string, number>;
}

/** `name:x:id:…` lines → name → id. */
export function parseIds(text: string): Map<string, number> {
  const ids = new Map<string, number>();
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length >= 3 && f[0] && /^\d+$/.test(f[2]!)) ids.set(f[0], Number(f[2]));
  }
  return ids;
}

export async function readAccounts(vol: Ext4Volume): Promise<ImageAccounts> {
  return { users: parseIds((await vol.readText("/etc/passwd")) ?? ""), groups: parseIds((await vol.readText("/etc/group")) ?? "") };
}

function idOf(owner: Owner, ids: Map<string, number>, what: "user" | "group", file: string): number {
  if (typeof owner === "number") return owner;
  const id = ids.get(owner);
  if (id === undefined) throw new PibakeError(`the image has no ${what} ${owner} in /etc/${what === "user" ? "passwd" : "group"} (the owner of ${file})`, 2);
  return id;
}

/**
 * Apply the edits in order. A file that is replaced or removed has its
 * bytes zeroed first (Ext4Volume), so no old key, hash or token stays in
 * the freed blocks. Returns the paths written and removed, for the log.
 */
export async function applyEdits(
  vol: Ext4Volume,
  edits: readonly ImageEdit[],
  accounts: ImageAccounts,
  signal?: AbortSignal,
): Promise<{ written: string[]; removed: string[] }> {
  const written: string[] = [];
  const removed: string[] = [];
  for (const e of edits) {
    signal?.throwIfAborted();
    if (e.kind === "remove") {
      if (await vol.lstat(e.path)) removed.push(e.path);
      await vol.remove(e.path);
    } else if (e.kind === "symlink") {
      await vol.symlink(e.path, e.target);
      written.push(`${e.path} -> ${e.target}`);
    } else {
      const uid = idOf(e.owner, accounts.users, "user", e.path);
      const gid = idOf(e.group, accounts.groups, "group", e.path);
      await vol.writeFile(e.path, e.content, { mode: e.mode, uid, gid });
      written.push(e.path);
    }
  }
  return { written, removed };
}
