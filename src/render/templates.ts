import type HandlebarsNamespace from "handlebars";
import { hash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { shellQuote } from "../host/shell.js";
import handlebarsRuntime from "./handlebars-runtime.js";
import { packageRoot } from "../paths.js";

type Handlebars = typeof HandlebarsNamespace;
type Template = HandlebarsTemplateDelegate;
const require = createRequire(import.meta.url);

/**
 * Handlebars in strict mode: a variable the view does not have is an error,
 * not an empty string in a config file. No HTML escaping: these are config files.
 * The build's precompiler (precompile.ts) and the compiler at run time take the same options.
 */
export const COMPILE_OPTIONS = { strict: true, noEscape: true } as const;

/**
 * Every template under overlays/ and stages/, compiled by `npm run build`
 * (precompile.ts): a render then loads Handlebars' small runtime, not its
 * compiler, and compiles nothing. Parsing and compiling the templates was
 * the largest part of a render's start-up.
 */
export const PRECOMPILED_FILE = path.join(packageRoot, "dist", "render", "templates.precompiled.cjs");

/** A template compiled ahead, by its path below the package root, with the SHA-256 of the source it was compiled from. */
export type PrecompiledTemplates = Record<string, { sha256: string; spec: TemplateSpecification }>;

/** The key of a template file in PrecompiledTemplates. */
export function templateKey(file: string): string {
  return path.relative(packageRoot, file).split(path.sep).join("/");
}

export function sourceDigest(source: string): string {
  return hash("sha256", source);
}

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
    throw new Error(
      "ddclientQuote: a value is empty or holds what ddclient's config cannot carry (white space, a single quote, a backslash, '#', \"password…=\", a control or non-ASCII character)",
    );
  }
  return `'${value}'`;
}

/** The few helpers the templates use, on an environment of their own. */
function withHelpers(hbs: Handlebars): Handlebars {
  hbs.registerHelper("shq", (value: unknown) => new hbs.SafeString(shellQuote(value)));
  hbs.registerHelper(
    "ddclientQuote",
    (value: unknown, options: HandlebarsNamespace.HelperOptions) => new hbs.SafeString(ddclientQuote(value, { password: options.hash?.password === true })),
  );
  /** Equality for a template's #if: what differs between releases. */
  hbs.registerHelper("eq", (a: unknown, b: unknown) => a === b);
  /** A JSON value (string with quotes and escapes, number, object), for JSON and JavaScript files. */
  hbs.registerHelper("json", (value: unknown) => new hbs.SafeString(JSON.stringify(value)));
  return hbs;
}

let runtime: Handlebars | undefined;
let compiler: Handlebars | undefined;
let precompiled: PrecompiledTemplates | null | undefined;

/** The build's precompiled templates; null in a checkout whose dist/ lacks them. */
function precompiledTemplates(): PrecompiledTemplates | null {
  if (precompiled === undefined) {
    try {
      precompiled = require(PRECOMPILED_FILE) as PrecompiledTemplates;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND") throw err;
      precompiled = null;
    }
  }
  return precompiled;
}

/**
 * A template file as a function of its view: the build's precompiled one
 * while the file is still what it was compiled from, else compiled now
 * (a template edited since the build, or one outside the package).
 */
export function loadTemplate(file: string, ahead: PrecompiledTemplates | null = precompiledTemplates()): Template {
  const source = readFileSync(file, "utf8");
  const entry = ahead?.[templateKey(file)];
  if (entry && entry.sha256 === sourceDigest(source)) {
    runtime ??= withHelpers(handlebarsRuntime.create());
    return runtime.template(entry.spec);
  }
  compiler ??= withHelpers((require("handlebars") as Handlebars).create());
  return compiler.compile(source, COMPILE_OPTIONS);
}

const cache = new Map<string, Template>();

export function renderTemplateFile(file: string, view: object): string {
  let template = cache.get(file);
  if (!template) {
    template = loadTemplate(file);
    cache.set(file, template);
  }
  try {
    return template(view);
  } catch (err) {
    throw new Error(`template ${file}: ${(err as Error).message}`);
  }
}
