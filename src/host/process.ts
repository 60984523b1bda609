import { execa } from "execa";
import type { Readable, Writable } from "node:stream";
import { PibakeError } from "../errors.js";
import { redact } from "./redact.js";
import type { BuildLog } from "./log.js";
import { DEBIAN_PACKAGE, toolPath } from "./tools.js";

/**
 * The one way pibake runs a program: its output split into lines as it
 * arrives (for progress), logged with secrets redacted, its last lines kept
 * for the error message, stopped when the build is interrupted, and a
 * failure that says what was being done.
 */

/** How long a child has to exit after it was asked to stop, before SIGKILL. */
export const KILL_AFTER_MS = 5000;

/** Whether a process with this id runs (one of another user's counts: EPERM). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Lines from chunks of output: "\n", "\r\n" and a bare "\r" (progress bars) end a line. */
export class LineSplitter {
  private partial = "";

  constructor(private readonly onLine: (line: string) => void) {}

  push(chunk: string): void {
    const lines = (this.partial + chunk).split(/\r?\n|\r/);
    this.partial = lines.pop() ?? "";
    for (const l of lines) if (l) this.onLine(l);
  }

  /** The last line, when the output did not end with a line break. */
  end(): void {
    if (this.partial) this.onLine(this.partial);
    this.partial = "";
  }
}

/** The last lines of a program's output, for an error message. */
export class Tail {
  private readonly kept: string[] = [];

  constructor(private readonly max = 40) {}

  push(line: string): void {
    this.kept.push(line);
    if (this.kept.length > this.max) this.kept.shift();
  }

  get lines(): readonly string[] {
    return this.kept;
  }

  /** "  | line" each, redacted. */
  format(): string {
    return this.kept.map((l) => `  | ${redact(l)}`).join("\n");
  }
}

export interface RunOptions {
  /** What this does, for the error message: "checking the root file system". */
  what: string;
  log?: BuildLog | undefined;
  signal?: AbortSignal | undefined;
  /** Standard input: text, or bytes (a tar after a password line); without it, none. */
  input?: string | Uint8Array | undefined;
  env?: Record<string, string> | undefined;
  /** false: the child gets `env` only, not this process's environment. */
  extendEnv?: boolean;
  cwd?: string | undefined;
  /** Exit codes that are success (e2fsck: 0, 1, 2), or "any": the caller looks at the result. */
  okCodes?: number[] | "any";
  /** Each output line as it arrives (stdout and stderr, interleaved). */
  onLine?: ((line: string) => void) | undefined;
  /** Lines kept for the error message. */
  tailLines?: number;
  timeout?: number | undefined;
  /** Run as this user and group instead of this process's (the user behind sudo: src/host/sudo.ts). */
  as?: { uid: number; gid: number } | undefined;
  /**
   * How an interruption stops it. Default: SIGTERM, SIGKILL after KILL_AFTER_MS.
   * A program with clean-up of its own (pi-gen) is sent `signal` to its whole
   * process group, as Ctrl-C on a terminal would, and given longer.
   */
  stop?: { signal: NodeJS.Signals; group: true; killAfterMs: number } | undefined;
  /** The error message for a failing exit code; default: what, the command, its exit code and last lines. */
  failure?: ((exit: string, tail: string) => string) | undefined;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  /** stdout and stderr, interleaved. */
  output: string;
  /** undefined when it was killed by a signal. */
  exitCode: number | undefined;
  signal: string | undefined;
  /** It was stopped because `timeout` passed. */
  timedOut: boolean;
  tail: readonly string[];
}

export async function run(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  opts.log?.command(cmd, args);
  const child = start(cmd, args, opts);
  const stopping = opts.stop?.group === true && opts.signal ? stopGroupOnAbort(child, opts.stop, opts.signal) : undefined;
  const tail = new Tail(opts.tailLines ?? 40);
  const lines = new LineSplitter((l) => {
    tail.push(l);
    opts.onLine?.(l);
  });
  child.all?.setEncoding("utf8");
  child.all?.on("data", (chunk: string) => lines.push(chunk));
  const r = await child;
  lines.end();
  stopping?.release();

  const output = String(r.all ?? "");
  if (output.trim()) opts.log?.line(output.trimEnd());
  const result: RunResult = {
    stdout: String(r.stdout ?? ""),
    stderr: String(r.stderr ?? ""),
    output,
    exitCode: r.exitCode,
    signal: r.signal,
    timedOut: r.timedOut,
    tail: tail.lines,
  };
  checkExit(cmd, args, opts, r, tail);
  return result;
}

/** The child, started with its output interleaved; one stopped as a group runs detached, in a group of its own. */
function start(cmd: string, args: readonly string[], opts: RunOptions) {
  const group = opts.stop?.group === true;
  return execa(cmd, args, {
    reject: false,
    all: true,
    env: { ...opts.env, PATH: opts.env?.PATH ?? toolPath() },
    ...(opts.extendEnv === false ? { extendEnv: false } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: "ignore" as const }),
    ...(opts.timeout ? { timeout: opts.timeout } : {}),
    ...(opts.as ? { uid: opts.as.uid, gid: opts.as.gid } : {}),
    ...(group ? { detached: true } : opts.signal ? { cancelSignal: opts.signal, forceKillAfterDelay: KILL_AFTER_MS } : {}),
  });
}

/** On abort, the stop signal to the child's whole group, then SIGKILL after its delay; release() once the child has exited. */
function stopGroupOnAbort(child: { pid?: number | undefined }, stop: NonNullable<RunOptions["stop"]>, signal: AbortSignal): { release(): void } {
  let forceKill: NodeJS.Timeout | undefined;
  const signalGroup = (sig: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, sig);
    } catch {
      // The group is gone already.
    }
  };
  const stopGroup = () => {
    signalGroup(stop.signal);
    forceKill = setTimeout(() => signalGroup("SIGKILL"), stop.killAfterMs);
  };
  signal.addEventListener("abort", stopGroup, { once: true });
  // An interruption that came while it was being started.
  if (signal.aborted) stopGroup();
  return {
    release: () => {
      signal.removeEventListener("abort", stopGroup);
      clearTimeout(forceKill);
    },
  };
}

/** A child that did not run, was stopped, or exited with a code the caller did not accept, as the error that says so; with okCodes "any", nothing. */
function checkExit(cmd: string, args: readonly string[], opts: RunOptions, r: Awaited<ReturnType<typeof start>>, tail: Tail): void {
  if (opts.okCodes === "any") return;
  if (r.isCanceled && opts.signal?.reason instanceof Error) throw opts.signal.reason;
  if (r.exitCode === undefined) {
    const notFound = (r as { code?: string }).code === "ENOENT" || /ENOENT/.test(r.message ?? "");
    if (notFound) throw new PibakeError(`${opts.what}: ${cmd} is not installed: sudo apt-get install ${DEBIAN_PACKAGE[cmd] ?? cmd}`);
    if (opts.signal?.aborted && opts.signal.reason instanceof Error) throw opts.signal.reason;
    throw new PibakeError(`${opts.what}: ${cmd} did not run (${r.signal ? `killed by ${r.signal}` : r.shortMessage})`);
  }
  if (!(opts.okCodes ?? [0]).includes(r.exitCode)) {
    const exit = `exit ${r.exitCode}`;
    const text = tail.format();
    throw new PibakeError(
      opts.failure ? opts.failure(exit, text) : `${opts.what}: \`${redact([cmd, ...args].join(" "))}\` failed (${exit})${text ? `:\n${text}` : ""}`,
    );
  }
}

/**
 * A command as its builder makes it: pure data, so that what pibake runs is
 * tested table-driven (test/commands.test.ts) apart from running it.
 */
export interface Command {
  cmd: string;
  args: string[];
  /** What it does, for the error message. */
  what: string;
  okCodes?: number[] | "any";
  /** Environment variables its output depends on (LC_ALL=C for a parser), over the caller's. */
  env?: Record<string, string>;
}

export function runCommand(c: Command, opts: Omit<RunOptions, "what" | "okCodes"> = {}): Promise<RunResult> {
  const env = c.env ? { ...opts.env, ...c.env } : opts.env;
  return run(c.cmd, c.args, { ...opts, what: c.what, ...(env ? { env } : {}), ...(c.okCodes !== undefined ? { okCodes: c.okCodes } : {}) });
}

/** How a piped program ended. */
export interface PipedResult {
  /** undefined when it was killed, or did not start. */
  exitCode: number | undefined;
  signal: string | undefined;
  stderr: string;
  /** Stopped by the `signal` it was started with. */
  canceled: boolean;
  /** Why it failed, in a few words ("Command was killed with SIGTERM", "spawn xz ENOENT"); "" when it did not. */
  message: string;
}

/**
 * A program whose standard output, and standard input if asked, are streams of
 * bytes rather than lines (a decompressor, a compressor); its standard error
 * is kept for the message. The caller judges the result: `done` never rejects.
 */
export interface PipedProcess {
  stdin: Writable | null;
  stdout: Readable;
  done: Promise<PipedResult>;
  kill(signal?: NodeJS.Signals): void;
}

export function startPiped(c: Command, opts: { stdin: "pipe"; signal?: AbortSignal | undefined }): PipedProcess & { stdin: Writable };
export function startPiped(c: Command, opts: { stdin: "ignore"; signal?: AbortSignal | undefined }): PipedProcess;
export function startPiped(c: Command, opts: { stdin: "pipe" | "ignore"; signal?: AbortSignal | undefined }): PipedProcess {
  const child = execa(c.cmd, c.args, {
    stdin: opts.stdin,
    stdout: "pipe",
    stderr: "pipe",
    buffer: { stdout: false, stderr: true },
    reject: false,
    env: { PATH: toolPath() },
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
  });
  const done = child.then(
    (r): PipedResult => ({
      exitCode: r.exitCode,
      signal: r.signal,
      stderr: String(r.stderr ?? ""),
      canceled: r.isCanceled,
      message: (r.failed && r.shortMessage) || "",
    }),
    (err: Error): PipedResult => ({ exitCode: undefined, signal: undefined, stderr: "", canceled: false, message: err.message }),
  );
  return { stdin: child.stdin, stdout: child.stdout, done, kill: (signal = "SIGTERM") => void child.kill(signal) };
}
