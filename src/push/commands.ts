import { readFileSync } from "node:fs";
import path from "node:path";
import type tar from "tar-stream";
import { stagesDir } from "../paths.js";
import type { Command } from "../host/process.js";
import { shellQuote } from "../host/shell.js";
import { sshCommand } from "../host/ssh.js";
import { OVERLAY_MTIME, packTar } from "../render/tar.js";
import type { OverlayFile } from "../render/overlay.js";

/**
 * The command lines `pibake push` runs, built without running anything: the
 * system's ssh client, and on the Pi the scripts under stages/push/ run as
 * root through sudo.
 */

export interface PushTarget {
  host: string;
  port: number;
  user: string;
  /** The private key (-i), alone: no agent key or ~/.ssh default is tried besides it. */
  key: string;
  knownHosts: string;
  connectTimeoutSeconds: number;
}

/**
 * ssh never asks (BatchMode); a host seen for the first time is remembered in
 * pibake's own known_hosts, and a changed host key stops the push.
 * ServerAlive bounds a connection that stops answering mid-way; only ssh's
 * errors are on stderr, which is the remote scripts' own.
 */
export function pushSsh(t: PushTarget, remoteCommand: string, what: string): Command {
  return sshCommand(
    {
      address: t.host,
      port: t.port,
      user: t.user,
      identity: t.key,
      connectTimeoutSeconds: t.connectTimeoutSeconds,
      hostKeys: { accept: "new", knownHosts: t.knownHosts },
      keepAlive: true,
      log: "errors",
    },
    remoteCommand,
    what,
  );
}

export const INSPECT_SCRIPT = path.join(stagesDir, "push/inspect.sh");
export const APPLY_SCRIPT = path.join(stagesDir, "push/apply.sh");

/**
 * The remote command that runs `script` as root with `args`. Standard input
 * starts with the first user's password and a newline; what follows is the
 * script's own input. Raspberry Pi OS from 2026-04-13 has no passwordless
 * sudo: `sudo -S` reads the password line (a byte at a time, leaving the rest)
 * and the script gets the rest. Where sudo needs no password, the line is read
 * and dropped first. The password is never on a command line.
 */
export function sudoCommand(script: string, args: string[]): string {
  const run = `bash -c ${shellQuote(script)} pibake-push ${args.map(shellQuote).join(" ")}`.trimEnd();
  return `if sudo -n true 2>/dev/null; then IFS= read -r _; exec sudo -n ${run}; else exec sudo -S -p '' ${run}; fi`;
}

export function inspectCommand(paths: string[]): string {
  return sudoCommand(
    readFileSync(INSPECT_SCRIPT, "utf8"),
    paths.map((p) => p.replace(/^\/+/, "")),
  );
}

export function applyCommand(tlsPort: number, rollbackTlsPort: number, healthSeconds: number): string {
  return sudoCommand(readFileSync(APPLY_SCRIPT, "utf8"), [String(tlsPort), String(healthSeconds), String(rollbackTlsPort)]);
}

/** What the apply script reads on its standard input (see stages/push/apply.sh). */
export interface PushPayload {
  files: OverlayFile[];
  removed: string[];
  actions: string[];
  record: unknown;
}

/** The tar the apply script unpacks: each file with its owner and group by name and its mode, as in the image's overlay. */
export function packPayload(p: PushPayload): Promise<Buffer> {
  return packTar((pack) => addPayload(pack, p));
}

function addPayload(pack: tar.Pack, p: PushPayload): void {
  const meta = (name: string, text: string, mode = 0o600) =>
    pack.entry({ name, type: "file", mode, uname: "root", gname: "root", uid: 0, gid: 0, mtime: OVERLAY_MTIME }, text);
  const dirs = new Set<string>(["files/"]);
  for (const f of p.files) {
    const parts = `files/${f.path}`.split("/");
    for (let i = 2; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/") + "/");
  }
  for (const d of [...dirs].sort()) pack.entry({ name: d, type: "directory", mode: 0o700, uname: "root", gname: "root", uid: 0, gid: 0, mtime: OVERLAY_MTIME });
  for (const f of [...p.files].sort((a, b) => (a.path < b.path ? -1 : 1))) {
    pack.entry({ name: `files/${f.path}`, type: "file", mode: f.mode, uname: f.owner, gname: f.group, uid: 0, gid: 0, mtime: OVERLAY_MTIME }, f.content);
  }
  meta("remove", p.removed.map((r) => `${r}\n`).join(""));
  meta("actions", p.actions.map((a) => `${a}\n`).join(""));
  // Readable by all, as the build's marker is: no secret is in it.
  meta("push.json", JSON.stringify(p.record, null, 2) + "\n", 0o644);
}
