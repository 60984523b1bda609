import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCommand, type Command, type RunResult } from "../host/process.js";
import { asInvoker, giveTo } from "../host/sudo.js";
import { stagesDir } from "../paths.js";
import { shellQuote } from "../host/shell.js";
import { sshCommand } from "../host/ssh.js";
import { judgeFacts, parseFacts } from "./facts.js";
import { failed, ok, warning, type Budget, type CheckResult } from "./result.js";

export interface SshCheckTarget {
  host: string;
  address: string;
  port: number;
  /** The first user: user.name, with user.sshKeys and user.passwordSsh. */
  user: string;
  keys: string[];
  passwordSsh: boolean;
  /** A private key to log in with; otherwise ssh's own choice (agent, ~/.ssh). */
  identity: string | undefined;
  buildCommand: string;
  /** The name ddclient keeps up to date (ddns.hostname); undefined without ddns. */
  ddnsHostname: string | undefined;
  /** configDigest of the config checked, and the command that pushes it, to tell whether the Pi runs it. */
  configDigest: string;
  pushCommand: string;
  /** tls.mode is "acme": the renewal's timer and last result are judged too. */
  acme?: boolean;
  /** Node-RED is on: its first-boot install is judged too. */
  nodeRed?: boolean;
}

export const FACTS_SCRIPT = path.join(stagesDir, "check/facts.sh");

/** The remote command that runs stages/check/facts.sh as the first user: no sudo, so no password is needed. */
export function factsCommand(ddnsHostname: string | undefined): string {
  return `bash -c ${shellQuote(readFileSync(FACTS_SCRIPT, "utf8"))} pibake-check ${shellQuote(ddnsHostname ?? "")}`;
}

/** "SHA256:…" of an OpenSSH public key line, as ssh-keygen -l and ssh -v print it. */
export function keyFingerprint(line: string): string | undefined {
  const blob = line.trim().split(/\s+/)[1];
  if (!blob) return undefined;
  return `SHA256:${createHash("sha256").update(Buffer.from(blob, "base64")).digest("base64").replace(/=+$/, "")}`;
}

/**
 * ssh to the Pi, never asking anything. The host key is not verified against
 * the user's known_hosts, nor added to it: a check must not change them (the
 * certificate origin line tells whether this is the right machine), so it goes
 * to `scratch`, a throwaway directory. A login that only tries ("true") is
 * verbose: ssh's debug lines say which keys were offered and accepted.
 */
export function checkSshCommand(target: SshCheckTarget, options: readonly string[], ms: number, scratch: string, remote = "true"): Command {
  return sshCommand(
    {
      address: target.address,
      port: target.port,
      user: target.user,
      identity: target.identity,
      connectTimeoutSeconds: Math.max(1, Math.ceil(ms / 1000)),
      hostKeys: { accept: "any", scratchKnownHosts: path.join(scratch, "known_hosts") },
      log: remote === "true" ? "verbose" : undefined,
      options,
    },
    remote,
    `ssh to ${target.host}`,
  );
}

/** The system's ssh client, once, bounded. Under sudo it runs as the user who ran sudo, with their keys and agent. */
async function ssh(target: SshCheckTarget, options: readonly string[], ms: number, remote = "true"): Promise<RunResult> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), "pibake-check-ssh-"));
  const user = asInvoker();
  giveTo(scratch);
  try {
    return await runCommand(checkSshCommand(target, options, ms, scratch, remote), { timeout: ms + 1000, ...(user ? { as: user, env: user.env } : {}) });
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Why ssh could not talk to the server at all, from its own words; undefined when it did. */
function unreachable(r: RunResult, ms: number): string | undefined {
  const lines = r.output.split("\n");
  // ssh's own error line ("ssh: connect to host … port 22: Connection refused") says it best.
  const line =
    lines.find((l) => /^ssh: /.test(l)) ??
    lines.find(
      (l) =>
        /Connection (refused|timed out)|Could not resolve hostname|No route to host|Network is unreachable|kex_exchange_identification/.test(l) &&
        !/^debug/.test(l),
    );
  if (r.exitCode === undefined) return `timed out (no answer within ${(ms / 1000).toFixed(0)} s)`;
  if (!line) return undefined;
  const kind = /refused/.test(line)
    ? "refused"
    : /timed out/.test(line)
      ? "timed out"
      : /resolve/.test(line)
        ? "no DNS"
        : /route|unreachable/i.test(line)
          ? "unreachable"
          : "failed";
  return `${kind} (${line.replace(/^ssh: /, "")})`;
}

/** The first user logs in with an SSH key of the config, and passwords are refused unless user.passwordSsh. */
export async function checkSsh(target: SshCheckTarget, budget: Budget): Promise<CheckResult[]> {
  const where = `${target.user}@${target.host}:${target.port}`;
  const known = new Map(target.keys.map((k) => [keyFingerprint(k), k.trim().split(/\s+/).slice(2).join(" ") || "no comment"]));
  const ms = budget.ms;
  const login = await ssh(target, ["PreferredAuthentications=publickey"], ms);
  const down = unreachable(login, ms);
  if (down)
    return [
      failed(
        "ssh",
        `${where}: ${down}; the other SSH checks were not tried`,
        "is the Pi up, and does SSH reach it from here (from outside, only what the router forwards does)?",
      ),
    ];
  const results: CheckResult[] = [];
  const accepted = /Server accepts key: .*?(SHA256:[A-Za-z0-9+/]+)/.exec(login.output)?.[1];
  let loggedIn = false;
  if (/Authenticated to .* using "publickey"/.test(login.output)) {
    loggedIn = true;
    if (accepted && known.has(accepted)) results.push(ok("ssh key login", `${where} accepts the key ${accepted} (${known.get(accepted)}) of user.sshKeys`));
    else
      results.push(
        failed(
          "ssh key login",
          `${where} accepts a key that is not in user.sshKeys (${accepted ?? "unknown"}): someone added it on the Pi`,
          "remove it from ~/.ssh/authorized_keys on the Pi, or add it to user.sshKeys",
        ),
      );
  } else {
    const offered = [...login.output.matchAll(/Offering public key: .*?(SHA256:[A-Za-z0-9+/]+)/g)].map((m) => m[1]!);
    const mine = offered.filter((f) => known.has(f));
    results.push(
      failed(
        "ssh key login",
        `${where} refused ${offered.length ? `the keys offered (${offered.join(", ")})` : "this machine: it offered no key"}${mine.length ? `, although ${mine.join(", ")} is in user.sshKeys: the image has other keys than the config` : ""}`,
        mine.length
          ? `build a new image (${target.buildCommand}) and flash it`
          : "load the private key of one of user.sshKeys into ssh-agent, or name it with --ssh-key FILE",
      ),
    );
  }
  if (!target.passwordSsh) {
    // Without a key, ssh asks for "none" first and the server lists what it would take.
    const pw = await ssh(target, ["PubkeyAuthentication=no", "PreferredAuthentications=password,keyboard-interactive"], budget.ms);
    const methods = /Authentications that can continue: (\S+)/.exec(pw.output)?.[1];
    if (!methods) results.push(failed("ssh passwords", `${where}: ${unreachable(pw, ms) ?? "the server named no login methods"}`));
    else if (/password|keyboard-interactive/.test(methods))
      results.push(
        failed(
          "ssh passwords",
          `${where} offers password logins (${methods}), but user.passwordSsh is false`,
          `build a new image (${target.buildCommand}): its sshd settings refuse passwords`,
        ),
      );
    else results.push(ok("ssh passwords", `${where} refuses passwords (it offers only ${methods})`));
  }
  if (loggedIn) results.push(...(await checkFacts(target, where, budget)));
  return results;
}

/** What the Pi says of itself, over the same key login: failed units, mosquitto, ddclient, headroom, pibake-status. */
async function checkFacts(target: SshCheckTarget, where: string, budget: Budget): Promise<CheckResult[]> {
  const ms = budget.ms;
  const r = await ssh(target, ["PreferredAuthentications=publickey"], ms, factsCommand(target.ddnsHostname));
  const down = unreachable(r, ms);
  if (down) return [failed("pi facts", `${where}: ${down}`)];
  try {
    return judgeFacts(parseFacts(r.stdout), {
      where,
      ddnsHostname: target.ddnsHostname,
      configDigest: target.configDigest,
      pushCommand: target.pushCommand,
      acme: target.acme === true,
      nodeRed: target.nodeRed === true,
    });
  } catch (err) {
    return [
      warning(
        "pi facts",
        `${where}: ${(err as Error).message} (exit ${r.exitCode ?? "killed"}): ${r.output.trim().split("\n").slice(-3).join(" | ").slice(0, 300)}`,
      ),
    ];
  }
}
