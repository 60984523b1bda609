import path from "node:path";
import type { Model } from "../config/model.js";
import { PibakeError } from "../errors.js";

/** An option given twice arrives as an array: the last one counts, as with most command lines. */
export function last<T>(value: T | T[] | undefined): T | undefined {
  return Array.isArray(value) ? value[value.length - 1] : value;
}

/** A port option (the last one given), or undefined when absent; anything but 1-65535 is a usage error naming the flag. */
export function portOption(given: string | number | undefined, flag: string): number | undefined {
  const value = last(given);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new PibakeError(`${flag} ${value} is not a port (1-65535)`, 2);
  return n;
}

/** The config's path as the user would type it in a command that a fix names. */
export function configArgument(model: Model): string {
  return path.relative(process.cwd(), model.configPath) || model.configPath;
}
