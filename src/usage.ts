/**
 * The command line's own manners, apart from any command: "did you mean"
 * for a mistyped command, action or option, cac's usage errors in pibake's
 * words (exit 2), and help that says what a command does, which actions it
 * takes and what its defaults are. Loaded at start, so it imports only errors.
 */
import type { CAC, Command } from "cac";
import { PibakeError } from "./errors.js";
import { editDistance } from "./spelling.js";

type CacOption = Command["options"][number];

interface HelpSection {
  title?: string;
  body: string;
}

/** A command's actions (`pibake ca export`), for its help and for checking the word given. */
export interface Action {
  name: string;
  description: string;
}

/** The one candidate the word was probably meant to be: close in spelling, or the only one it begins. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  // Short words are close to too much: allow one edit up to 5 letters, two from 6.
  const allowed = w.replace(/^-+/, "").length >= 6 ? 2 : 1;
  const scored = candidates.map((c) => ({ c, d: editDistance(w, c.toLowerCase()) })).sort((x, y) => x.d - y.d);
  const best = scored[0];
  if (best && best.d <= allowed && scored.filter((s) => s.d === best.d).length === 1) return best.c;
  const prefixed = candidates.filter((c) => w.replace(/^-+/, "").length >= 2 && c.toLowerCase().startsWith(w));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

function didYouMean(word: string, candidates: readonly string[]): string {
  const guess = closest(word, candidates);
  return guess ? `did you mean "${guess}"?` : "";
}

export function unknownCommand(name: string, cli: CAC): PibakeError {
  const hint = didYouMean(
    name,
    cli.commands.map((c) => c.name),
  );
  return new PibakeError(`unknown command "${name}"${hint ? `: ${hint}` : ""} (see pibake --help)`, 2);
}

/** The action word of `pibake ca ACTION` or `pibake images ACTION`, checked before the command's code is loaded. */
export function checkAction(command: string, action: string | undefined, actions: readonly Action[]): string {
  const names = actions.map((a) => a.name);
  if (action !== undefined && names.includes(action)) return action;
  const quoted = names.map((n) => `"${n}"`);
  const needs = `${command} needs an action: ${quoted.length > 1 ? `${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}` : quoted[0]}`;
  if (action === undefined || action === "") throw new PibakeError(needs, 2);
  const hint = didYouMean(String(action), names);
  throw new PibakeError(`${needs}, not "${action}"${hint ? `: ${hint}` : ""} (see pibake ${command} --help)`, 2);
}

/** The long forms an option is typed as: "--bmap [file]" is "--bmap", "-h, --help" is "--help". */
function spellings(option: CacOption): string[] {
  return option.rawName
    .split(",")
    .map((s) => s.trim().split(/\s/)[0]!)
    .filter((s) => s.startsWith("-"));
}

/** cac's camelCase for an option name ("dry-run" is "dryRun"). */
function camel(name: string): string {
  return name.replace(/([a-z])-([a-z])/g, (_, a: string, b: string) => a + b.toUpperCase());
}

/** What the user typed for the option that cac calls `name`, from the raw arguments. */
function typedOption(name: string, argv: readonly string[]): string {
  const end = argv.indexOf("--");
  for (const arg of end === -1 ? argv : argv.slice(0, end)) {
    const m = /^(-{1,2})(?:no-)?([^=]+)/.exec(arg);
    if (m && camel(m[2]!) === name) return arg.split("=")[0]!;
  }
  return name.length > 1 ? `--${name}` : `-${name}`;
}

function knownOptions(cli: CAC): CacOption[] {
  return [...(cli.matchedCommand?.options ?? []), ...cli.globalCommand.options];
}

function commandLabel(cli: CAC): string {
  return cli.matchedCommand ? `pibake ${cli.matchedCommand.name}` : "pibake";
}

function unknownOption(typed: string, cli: CAC): PibakeError {
  const hint = didYouMean(typed, knownOptions(cli).flatMap(spellings));
  const help = cli.matchedCommand ? `pibake ${cli.matchedCommand.name} --help` : "pibake --help";
  return new PibakeError(`unknown option ${typed} for ${commandLabel(cli)}${hint ? `: ${hint}` : ""} (see ${help})`, 2);
}

/**
 * Options given without a command (`pibake --frob`): cac checks options only
 * for a command, and would print the help and succeed.
 */
export function checkGlobalOptions(cli: CAC, argv: readonly string[]): void {
  const known = new Set(cli.globalCommand.options.flatMap((o) => o.names));
  for (const name of Object.keys(cli.options)) {
    if (name !== "--" && !known.has(name)) throw unknownOption(typedOption(name, argv), cli);
  }
}

/**
 * cac's usage errors (plain Errors named CACError) as pibake's: what was
 * wrong, the command's usage, exit 2. Anything else is returned as it was.
 */
export function usageError(err: unknown, cli: CAC, argv: readonly string[]): unknown {
  if (!(err instanceof Error) || err.name !== "CACError") return err;
  const usage = cli.matchedCommand ? ` (usage: pibake ${cli.matchedCommand.rawName} [options])` : "";
  let m: RegExpExecArray | null;
  if ((m = /^Unknown option `-{1,2}(.+)`$/.exec(err.message))) return unknownOption(typedOption(m[1]!, argv), cli);
  if ((m = /^option `(\S+)[^`]*` value is missing$/.exec(err.message))) return new PibakeError(`${m[1]} needs a value${usage}`, 2);
  if (/^missing required args/.test(err.message)) {
    const missing =
      cli.matchedCommand?.args
        .filter((a) => a.required)
        .slice(cli.args.length)
        .map((a) => a.value.toUpperCase()) ?? [];
    return new PibakeError(`${cli.matchedCommand?.name ?? "the command"} needs ${missing.join(" and ") || "more arguments"}${usage}`, 2);
  }
  if ((m = /^Unused args: (.*)$/.exec(err.message))) return new PibakeError(`too many arguments: ${m[1]!.replaceAll("`", "")}${usage}`, 2);
  return new PibakeError(err.message, 2);
}

function padRight(s: string, n: number): string {
  return s.length >= n ? s : s + " ".repeat(n - s.length);
}

/**
 * Help as cac lays it out, with what cac leaves out: a command's description
 * and actions, and defaults in words. cac shows `--no-verify` as "(default:
 * true)", which reads as if verifying were off: negated options say their
 * default in their description instead.
 */
export function helpSections(cli: CAC, actions: Readonly<Record<string, readonly Action[]>>) {
  return (sections: HelpSection[]): HelpSection[] => {
    const command = cli.matchedCommand;
    const options = command ? [...command.options, ...cli.globalCommand.options].filter((o) => o.name !== "version") : cli.globalCommand.options;
    const width = Math.max(0, ...options.map((o) => o.rawName.length));
    const optionLines = options.map((o) => {
      const value = o.config.default;
      const dflt = o.negated || value === undefined ? "" : ` (default: ${String(value)})`;
      return `  ${padRight(o.rawName, width)}  ${o.description}${dflt}`;
    });
    const out = sections.map((s) => (s.title === "Options" ? { ...s, body: optionLines.join("\n") } : s));
    if (!command) return out;
    const own = actions[command.name];
    if (own?.length) {
      const w = Math.max(...own.map((a) => a.name.length));
      const usageAt = out.findIndex((s) => s.title === "Usage");
      out.splice(usageAt + 1, 0, { title: "Actions", body: own.map((a) => `  ${padRight(a.name, w)}  ${a.description}`).join("\n") });
    }
    // After the "pibake/VERSION" line: what the command is for.
    out.splice(1, 0, { body: command.description });
    return out;
  };
}
