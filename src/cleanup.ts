import { InterruptedError } from "./errors.js";

/**
 * One place that releases what long work holds (mounts, loop devices, child
 * processes, temporary files), on success, failure and Ctrl-C alike.
 *
 * Use `withCleanup(async (scope) => { scope.defer(() => ...) })`: deferred
 * actions run last-in first-out when the body ends, however it ends. A signal
 * while a scope is open makes `scope.signal` abort, so that the body stops at
 * its next await; the scope still unwinds before the process exits.
 */
export interface CleanupScope {
  defer(action: () => unknown | Promise<unknown>, label?: string): void;
  readonly signal: AbortSignal;
  throwIfInterrupted(): void;
}

const openScopes = new Set<AbortController>();
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
      for (const c of openScopes) c.abort(new InterruptedError(sig));
    });
  }
}

export async function withCleanup<T>(body: (scope: CleanupScope) => Promise<T>): Promise<T> {
  installSignalHandlers();
  const controller = new AbortController();
  if (interruptedBy) controller.abort(new InterruptedError(interruptedBy));
  openScopes.add(controller);
  const actions: { action: () => unknown; label: string | undefined }[] = [];
  const scope: CleanupScope = {
    defer: (action, label) => actions.push({ action, label }),
    signal: controller.signal,
    throwIfInterrupted: () => {
      if (controller.signal.aborted) throw controller.signal.reason;
    },
  };
  try {
    return await body(scope);
  } finally {
    openScopes.delete(controller);
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
}
