import Handlebars from "handlebars";
import { readFileSync } from "node:fs";

/**
 * Handlebars in strict mode: a variable the view does not have is an error,
 * not an empty string in a config file. No HTML escaping: these are config files.
 */
const hbs = Handlebars.create();

/** Single-quote for POSIX shells: the value cannot end the quote or expand anything. */
export function shellQuote(value: unknown): string {
  return `'${String(value).replace(/'/g, `'\\''`)}'`;
}

hbs.registerHelper("shq", (value: unknown) => new Handlebars.SafeString(shellQuote(value)));
/** A JSON value (string with quotes and escapes, number, object), for JSON and JavaScript files. */
hbs.registerHelper("json", (value: unknown) => new Handlebars.SafeString(JSON.stringify(value)));

const cache = new Map<string, HandlebarsTemplateDelegate>();

export function renderTemplateFile(file: string, view: object): string {
  let template = cache.get(file);
  if (!template) {
    template = hbs.compile(readFileSync(file, "utf8"), { strict: true, noEscape: true });
    cache.set(file, template);
  }
  try {
    return template(view);
  } catch (err) {
    throw new Error(`template ${file}: ${(err as Error).message}`);
  }
}
