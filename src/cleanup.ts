import { InterruptedError } from "./errors.js";

/**
 * One place that releases what long work holds (mounts, loop devices, child
 * processes, temporary files), on success, failure and Ctrl-C alike.
 *
 * Use `withCleanup(async (scope) => { scope.defer(() => ...) })`: deferred
 * actions run last-in first-out when the body ends, however it ends. A signal
 * while a scope is open makes `scope.signal` abort, so that the body stops at
 * its next await; the scope still unwinds before the process exits.
 * `unwindAll` does the same for an exception that nothing caught (the CLI's
 * last resort).
 */
export interface CleanupScope {
  defer(action: () => unknown | Promise<unknown>, label?: string): void;
  /** What the work is doing, for the last resort to say when the work never ended by itself: asked after its clean-up ran. */
  describe(where: () => string): void;
  readonly signal: AbortSignal;
  throwIfInterrupted(): void;
}

interface OpenScope {
  controller: AbortController;
  /** Runs the deferred actions, once, however many ask. */
  release(): Promise<void>;
  /** Settles when the body has ended and the actions have run. */
  ended: Promise<void>;
  where?: () => string;
}

const openScopes = new Set<OpenScope>();
let handlersInstalled = false;
let interruptedBy: string | undefined;

function installSignalHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      if (interruptedBy) {
        // A second Ctrl-C while cleaning up: the user insists.
        process.stderr.write(`\n${sig} again: exiting without finishing the clean-up\n`);
        process.exit(130);
      }
      // Nothing to release: exit as the signal would have.
      if (openScopes.size === 0) process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
      interruptedBy = sig;
      process.stderr.write(`\n${sig}: stopping and cleaning up…\n`);
      for (const s of openScopes) s.controller.abort(new InterruptedError(sig));
    });
  }
}

export async function withCleanup<T>(body: (scope: CleanupScope) => Promise<T>): Promise<T> {
  installSignalHandlers();
  const controller = new AbortController();
  if (interruptedBy) controller.abort(new InterruptedError(interruptedBy));
  const actions: { action: () => unknown; label: string | undefined }[] = [];
  let releasing: Promise<void> | undefined;
  let ended!: () => void;
  const open: OpenScope = {
    controller,
    release: () => (releasing ??= runActions(actions)),
    ended: new Promise<void>((resolve) => (ended = resolve)),
  };
  openScopes.add(open);
  const scope: CleanupScope = {
    defer: (action, label) => actions.push({ action, label }),
    describe: (where) => (open.where = where),
    signal: controller.signal,
    throwIfInterrupted: () => {
      if (controller.signal.aborted) throw controller.signal.reason;
    },
  };
  try {
    return await body(scope);
  } finally {
    openScopes.delete(open);
    await open.release();
    ended();
  }
}

async function runActions(actions: { action: () => unknown; label: string | undefined }[]): Promise<void> {
  const failures: string[] = [];
  for (const { action, label } of actions.reverse()) {
    try {
      await action();
    } catch (err) {
      failures.push(`${label ?? "clean-up step"}: ${(err as Error).message}`);
    }
  }
  if (failures.length > 0) {
    process.stderr.write(`warning: clean-up was incomplete:\n  ${failures.join("\n  ")}\n`);
  }
}

/**
 * The last resort (src/cli.ts): an exception that escaped every caller, from
 * a library's event handler say. Every open scope is stopped with it as its
 * reason, as Ctrl-C stops them, so that its body fails the way it reports
 * failures (the build names its step and keeps its log); a body that has not
 * ended after `graceMs` (a crashed library may leave a promise that never
 * settles) has its clean-up run regardless. Resolves, when every clean-up has
 * run, with what those abandoned bodies were doing.
 */
export async function unwindAll(reason: unknown, graceMs: number): Promise<string[]> {
  const scopes = [...openScopes];
  for (const s of scopes) if (!s.controller.signal.aborted) s.controller.abort(reason);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
  const ended = new Set<OpenScope>();
  await Promise.race([Promise.all(scopes.map((s) => s.ended.then(() => ended.add(s)))), late]);
  clearTimeout(timer);
  const abandoned = scopes.filter((s) => !ended.has(s));
  // The innermost first, as a body's own unwinding would.
  for (const s of [...scopes].reverse()) await s.release();
  return abandoned.flatMap((s) => (s.where ? [s.where()] : []));
}
