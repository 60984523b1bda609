import type { Command } from "./process.js";

/**
 * The system's ssh client, as one pure command builder for `pibake check`
 * and `pibake push`: the arguments are decided here and tested as data
 * (test/ssh.test.ts). ssh never asks anything (BatchMode), connects within a
 * bound, and reads no global known_hosts; what differs between the callers is
 * named in SshLogin.
 */

/** What ssh does with the server's host key. */
export type HostKeys =
  /** Remembered in pibake's own known_hosts the first time; a changed key stops ssh (push). */
  | { accept: "new"; knownHosts: string }
  /**
   * Not verified, and written only to a throwaway file: a check must not change
   * the user's known_hosts (what tells the right machine is elsewhere).
   */
  | { accept: "any"; scratchKnownHosts: string };

export interface SshLogin {
  /** What ssh connects to: a name or an address. */
  address: string;
  port: number;
  user: string;
  /** A private key, tried alone (IdentitiesOnly); undefined: ssh's own choice (agent, ~/.ssh). */
  identity?: string | undefined;
  connectTimeoutSeconds: number;
  hostKeys: HostKeys;
  /** ServerAlive: a connection that stops answering mid-way ends within 30 s. */
  keepAlive?: boolean;
  /** "verbose" (-v): ssh says which keys it offered and what the server accepts; "errors": only its errors on stderr. Default: ssh's own. */
  log?: "verbose" | "errors" | undefined;
  /** More -o options, "Name=value"; none may be set twice, here or by the builder (ssh would take the first). */
  options?: readonly string[];
}

/** The -o options the builder decides, by name, in their order. */
function builderOptions(l: SshLogin): string[] {
  const keys = l.hostKeys;
  return [
    "BatchMode=yes",
    `ConnectTimeout=${l.connectTimeoutSeconds}`,
    `StrictHostKeyChecking=${keys.accept === "new" ? "accept-new" : "no"}`,
    `UserKnownHostsFile=${keys.accept === "new" ? keys.knownHosts : keys.scratchKnownHosts}`,
    "GlobalKnownHostsFile=/dev/null",
    ...(l.keepAlive ? ["ServerAliveInterval=10", "ServerAliveCountMax=3"] : []),
    ...(l.identity ? ["IdentitiesOnly=yes"] : []),
    ...(l.log === "errors" ? ["LogLevel=ERROR"] : []),
  ];
}

const optionName = (o: string) => o.split("=")[0]!.toLowerCase();

/** ssh to `login`, running `remote` there; any exit code is an answer (255 is ssh's own failure). */
export function sshCommand(login: SshLogin, remote: string, what: string): Command {
  const own = builderOptions(login);
  const taken = new Set(own.map(optionName));
  for (const o of login.options ?? []) {
    if (!/^[A-Za-z]+=/.test(o)) throw new Error(`ssh option ${o} is not Name=value`);
    if (taken.has(optionName(o))) throw new Error(`ssh option ${o} is set twice (ssh would take the first)`);
    taken.add(optionName(o));
  }
  return {
    cmd: "ssh",
    args: [
      ...(login.log === "verbose" ? ["-v"] : []),
      ...[...own, ...(login.options ?? [])].flatMap((o) => ["-o", o]),
      ...(login.identity ? ["-i", login.identity] : []),
      "-p",
      String(login.port),
      "-l",
      login.user,
      "--",
      login.address,
      remote,
    ],
    what,
    okCodes: "any",
  };
}
