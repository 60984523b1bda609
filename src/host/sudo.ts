/**
 * The user behind sudo. `sudo -E pibake build` runs as root, but what it makes
 * for the user (the state directory, --out, the image cache) must stay theirs:
 * `pibake ca export`, `check`, `push` and `render` run afterwards without sudo
 * must read and replace it. And ssh run for them must use their keys.
 */
import { lchownSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";
import type { Command } from "./process.js";
import { askSync } from "./query.js";

/** Who ran sudo, when pibake runs as root under sudo for another user. */
export interface Invoker {
  name: string;
  uid: number;
  gid: number;
  /** Their home from the user database; undefined when it cannot be found. */
  home: string | undefined;
}

/** A user's line of the system's user database, by name or uid: getent covers LDAP and the like; exit 2 is "no such user". */
export const passwdQuery = (key: string): Command => ({ cmd: "getent", args: ["passwd", key], what: `looking up ${key} in the user database` });

/** One line of the system's user database, split at its colons. */
function passwdEntry(key: string): string[] | undefined {
  const line = askSync(passwdQuery(key))?.trim();
  return line ? line.split("\n")[0]!.split(":") : undefined;
}

/** A user's home directory from the system's user database. */
export function homeOf(user: string): string | undefined {
  const home = passwdEntry(user)?.[5];
  return home && path.isAbsolute(home) ? home : undefined;
}

/** A user's name by uid, for messages; the number when the database does not know it. */
export function userName(uid: number): string {
  return passwdEntry(String(uid))?.[0] || String(uid);
}

/**
 * The invoking user as sudo describes it (SUDO_USER, SUDO_UID, SUDO_GID), when
 * this process is root and that user is not root; undefined otherwise.
 */
export function sudoInvoker(
  env: NodeJS.ProcessEnv = process.env,
  uid: number = process.getuid?.() ?? -1,
  lookupHome: (user: string) => string | undefined = homeOf,
): Invoker | undefined {
  const name = env.SUDO_USER;
  const sudoUid = Number(env.SUDO_UID);
  const sudoGid = Number(env.SUDO_GID);
  if (uid !== 0 || !name || name === "root" || !Number.isSafeInteger(sudoUid) || sudoUid <= 0 || !Number.isSafeInteger(sudoGid) || sudoGid < 0)
    return undefined;
  return { name, uid: sudoUid, gid: sudoGid, home: lookupHome(name) };
}

let cached: { key: string; invoker: Invoker | undefined } | undefined;
/** This process's invoker, looked up once for the same sudo variables. */
export function invoker(): Invoker | undefined {
  const env = process.env;
  const key = `${env.SUDO_USER}:${env.SUDO_UID}:${env.SUDO_GID}`;
  if (cached?.key !== key) cached = { key, invoker: sudoInvoker(env) };
  return cached.invoker;
}

/**
 * Give a file or directory to the invoker (no-op without one). A file system
 * that refuses (vfat, NFS with root squashed) leaves it root's: the user is
 * then told how to fix it when they cannot read it.
 */
export function giveTo(file: string, owner: Pick<Invoker, "uid" | "gid"> | undefined = invoker()): void {
  if (!owner) return;
  try {
    lchownSync(file, owner.uid, owner.gid);
  } catch {
    // See above.
  }
}

/** Give a directory and everything below it to the invoker. */
export function giveTree(root: string, owner: Invoker | undefined = invoker()): void {
  if (!owner) return;
  giveTo(root, owner);
  let entries;
  try {
    entries = readdirSync(root, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(root, e.name);
    if (e.isDirectory()) giveTree(p, owner);
    else giveTo(p, owner);
  }
}

/**
 * `mkdir -p` that gives the directories it made (not those that were there)
 * to the invoker. Returns the first directory it made, as mkdirSync does.
 */
export function mkdirOwned(dir: string, mode = 0o777, owner: Invoker | undefined = invoker()): string | undefined {
  const first = mkdirSync(dir, { recursive: true, mode });
  if (first && owner) {
    const target = path.resolve(dir);
    for (let d = target; ; d = path.dirname(d)) {
      giveTo(d, owner);
      if (d === path.resolve(first) || d === path.dirname(d)) break;
    }
  }
  return first;
}

/**
 * What starts a program as the invoker (execa's and run()'s uid, gid and env),
 * or nothing without one. ssh run so reads their ~/.ssh (keys, config,
 * known_hosts) and talks to their agent, as it would without sudo; run as
 * root it would take root's, and refuse their config as another user's.
 */
export function asInvoker(owner: Invoker | undefined = invoker()): { uid: number; gid: number; env: Record<string, string> } | undefined {
  if (!owner) return undefined;
  return { uid: owner.uid, gid: owner.gid, env: { USER: owner.name, LOGNAME: owner.name, ...(owner.home ? { HOME: owner.home } : {}) } };
}
