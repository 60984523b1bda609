import { cac, type CAC } from "cac";
import { unwindAll } from "./cleanup.js";
import { ConfigError, PibakeError } from "./errors.js";
import { PIBAKE_VERSION } from "./version.js";
import { redact } from "./host/redact.js";
import { guardOutputStreams } from "./ui/output.js";
import { ACTIONS, registerCommands } from "./commands/index.js";
import { checkGlobalOptions, helpSections, unknownCommand, usageError } from "./usage.js";

export function createCli(): CAC {
  const cli = cac("pibake");
  // Options and help only: each command's code is imported when it runs (src/commands/index.ts).
  registerCommands(cli);
  cli.option("--debug", "Show stack traces of unexpected errors");
  cli.help(helpSections(cli, ACTIONS));
  cli.version(PIBAKE_VERSION);
  return cli;
}

/** Thin entry: parse, run, and turn errors into a message and an exit code. */
export async function main(argv: string[]): Promise<void> {
  const cli = createCli();
  let debug = argv.includes("--debug");
  guardOutputStreams();
  await runCommand(
    async () => {
      const parsed = cli.parse(argv, { run: false });
      debug = Boolean(parsed.options.debug);
      if (!cli.matchedCommand) {
        if (parsed.options.help || parsed.options.version) return;
        if (parsed.args.length > 0) throw unknownCommand(String(parsed.args[0]), cli);
        checkGlobalOptions(cli, argv.slice(2));
        cli.outputHelp();
        return;
      }
      await cli.runMatchedCommand();
    },
    { debug: () => debug, usageError: (err) => usageError(err, cli, argv.slice(2)) },
  );
}

export interface RunOptions {
  debug: () => boolean;
  /** Turns the argument parser's errors into usage errors (exit 2, "did you mean"). */
  usageError?: (err: unknown) => unknown;
  /** How long the last resort lets the running work unwind by itself before it runs the clean-up regardless. */
  graceMs?: number;
}

/**
 * Run one command and report how it ended. An exception that escapes
 * everything (`uncaughtException`, `unhandledRejection`: a library throwing
 * from its own event handler, where no caller can catch it) stops the work
 * as Ctrl-C does: the clean-up scopes run (mounts, loop devices, temporary
 * files, locks), the command reports its failure as it would any other (a
 * build names its step and its log), and pibake exits 1.
 */
export async function runCommand(run: () => Promise<void>, opts: RunOptions): Promise<void> {
  let crashed = false;
  let reported = false;
  let settled!: () => void;
  const done = new Promise<void>((resolve) => (settled = resolve));
  const lastResort = async (err: unknown) => {
    if (crashed) return;
    crashed = true;
    process.exitCode = 1;
    const where = await unwindAll(err, opts.graceMs ?? 20_000);
    // The command's own report, once its work has unwound, says where it failed; a moment for it to arrive.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2_000)))]);
    clearTimeout(timer);
    if (!reported) report(err, opts.debug(), where.join(", "));
    // Whatever the crash left behind (sockets, timers) must not keep the process alive.
    process.exit(1);
  };
  process.on("uncaughtException", lastResort);
  process.on("unhandledRejection", lastResort);
  try {
    await run();
  } catch (err) {
    process.exitCode = report(opts.usageError ? opts.usageError(err) : err, opts.debug());
    reported = true;
  } finally {
    if (crashed) process.exitCode = 1;
    settled();
  }
}

/** `where`: what the work was doing, when it never reported by itself. */
function report(err: unknown, debug: boolean, where = ""): number {
  if (err instanceof PibakeError) {
    process.stderr.write(`pibake: ${redact(err.message)}\n`);
    // An unexpected error wrapped in a message for users (a build's step) shows its own stack.
    const stack = err.cause instanceof Error && !(err.cause instanceof PibakeError) ? err.cause.stack : err.stack;
    if (debug && !(err instanceof ConfigError) && stack) process.stderr.write(redact(stack) + "\n");
    return err.exitCode;
  }
  // cac reports unknown options and missing arguments as plain errors with this name.
  if (err instanceof Error && err.name === "CACError") {
    process.stderr.write(`pibake: ${err.message}\n`);
    return 2;
  }
  const e = err as Error;
  process.stderr.write(`pibake: unexpected error${where ? ` ${where}` : ""}: ${redact(e?.message ?? String(err))}\n`);
  if (debug && e?.stack) process.stderr.write(redact(e.stack) + "\n");
  else process.stderr.write("(run again with --debug for details)\n");
  return 1;
}
