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

/**
 * A value for /etc/ddclient.conf (read by root's ddclient): a whole number as is, a string in single
 * quotes. Unquoted, ddclient ends a value at ',' or white space and reads the rest as more keywords
 * (login "me,usev4=cmdv4,cmdv4=/prog" ran /prog); quoted, ',' '=' '"' '$' are plain. No escape is
 * relied on (the password line is read raw, other lines read '\' as an escape), so what quotes alone
 * cannot carry throws; config validation refuses it first, naming the field (see ddclientSafe):
 * ' \ white space, control and non-ASCII characters (3.11+ mangle byte 0x85 for curl), '#' outside
 * the password (comments are cut first), and "password…=" outside it (taken for a password line).
 * The error never shows the value: it may be a secret.
 */
export function ddclientQuote(value: unknown, opts: { password?: boolean } = {}): string {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) throw new Error("ddclientQuote: a number for ddclient's config is not a whole number of 0 or more");
    return String(value);
  }
  if (typeof value !== "string") throw new Error(`ddclientQuote: a ${typeof value} is no value for ddclient's config`);
  if (!/^[\x21-\x7e]+$/.test(value) || /['\\]/.test(value) || (!opts.password && (value.includes("#") || /password.*=/i.test(value)))) {
    throw new Error("ddclientQuote: a value is empty or holds what ddclient's config cannot carry (white space, a single quote, a backslash, '#', \"password…=\", a control or non-ASCII character)");
  }
  return `'${value}'`;
}

hbs.registerHelper("ddclientQuote", (value: unknown, options: Handlebars.HelperOptions) =>
  new Handlebars.SafeString(ddclientQuote(value, { password: options.hash?.password === true })),
);
/** Equality for a template's #if: what differs between releases. */
hbs.registerHelper("eq", (a: unknown, b: unknown) => a === b);
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
