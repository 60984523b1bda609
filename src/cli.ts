import { cac, type CAC } from "cac";
import { ConfigError, PibakeError } from "./errors.js";
import { PIBAKE_VERSION } from "./version.js";
import { guardOutputStreams, redact } from "./ui/output.js";
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
  try {
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
  } catch (err) {
    process.exitCode = report(usageError(err, cli, argv.slice(2)), debug);
  }
}

function report(err: unknown, debug: boolean): number {
  if (err instanceof PibakeError) {
    process.stderr.write(`pibake: ${redact(err.message)}\n`);
    if (debug && !(err instanceof ConfigError) && err.stack) process.stderr.write(redact(err.stack) + "\n");
    return err.exitCode;
  }
  // cac reports unknown options and missing arguments as plain errors with this name.
  if (err instanceof Error && err.name === "CACError") {
    process.stderr.write(`pibake: ${err.message}\n`);
    return 2;
  }
  const e = err as Error;
  process.stderr.write(`pibake: unexpected error: ${redact(e?.message ?? String(err))}\n`);
  if (debug && e?.stack) process.stderr.write(redact(e.stack) + "\n");
  else process.stderr.write("(run again with --debug for details)\n");
  return 1;
}
