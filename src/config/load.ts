import { readFileSync, statSync } from "node:fs";
import { ParseErrorCode, type ParseError } from "jsonc-parser";
import { parse as parseJsonc } from "./jsonc.js";
import path from "node:path";
import type { z } from "zod";
import { ConfigError, PibakeError, type ConfigIssue } from "../errors.js";
import { AUTOSAVE_INTERVAL_S, configSchema, IPV4_RE, type ParsedConfig, type SecretRef } from "./schema.js";
import { Secret, type Ddns, type Model } from "./model.js";
import { crossFieldIssues, subnetOf } from "./rules.js";
import { nodeRedModel } from "./node-red.js";
import { packageRoot } from "../paths.js";

export interface LoadedConfig {
  model: Model;
  /** Things worth saying that do not stop the build (e.g. a secret written in the config). */
  warnings: string[];
}

/** Keys whose values are secrets: their values are never echoed in messages. */
const SECRET_KEYS = new Set(["password", "token", "passphrase"]);

/** Read, validate and resolve a config file. Every problem is reported at once (ConfigError, exit 2). */
export function loadConfig(configPath: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const absPath = path.resolve(configPath);
  return checkConfig(readJson(absPath), absPath, env);
}

/** A config not yet written (pibake init's): checked as if it were read from `configPath`. */
export function checkConfig(raw: unknown, configPath: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const absPath = path.resolve(configPath);
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map((i) => formatIssue(i, raw)));
  const issues = crossFieldIssues(parsed.data);
  const warnings: string[] = [];
  const resolver = new SecretResolver(path.dirname(absPath), env, issues, warnings);
  const model = toModel(parsed.data, absPath, resolver);
  if (issues.length > 0) throw new ConfigError(issues);
  warnings.push(...exampleKeyWarnings(parsed.data.user.sshKeys));
  return { model, warnings };
}

function readJson(absPath: string): unknown {
  let text: string;
  try {
    text = readFileSync(absPath, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PibakeError(code === "ENOENT" ? `config file ${absPath} does not exist` : `cannot read config file ${absPath}: ${(err as Error).message}`, 2);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // JSON.parse's own message quotes a slice of the file, which may be a password written in it.
    throw new PibakeError(`config file ${absPath} is not valid JSON: ${describeJsonError(text)}`, 2);
  }
  const tooDeep = deeperThan(value, MAX_DEPTH);
  if (tooDeep) {
    throw new ConfigError([
      { path: `${jsonPath(tooDeep.slice(0, 4))}…`, message: `is nested more than ${MAX_DEPTH} levels deep; a pibake config has at most 6` },
    ]);
  }
  return value;
}

/** Deep enough for any config; deeper input would overflow the stack of whatever reports on it. */
const MAX_DEPTH = 32;

/** The path of the first value below `max` levels of objects and lists, walked without recursion. */
function deeperThan(root: unknown, max: number): PropertyKey[] | undefined {
  const stack: { value: unknown; path: PropertyKey[] }[] = [{ value: root, path: [] }];
  while (stack.length > 0) {
    const { value, path: at } = stack.pop()!;
    if (value === null || typeof value !== "object") continue;
    if (at.length >= max) return at;
    for (const [k, v] of Object.entries(value)) stack.push({ value: v, path: [...at, Array.isArray(value) ? Number(k) : k] });
  }
  return undefined;
}

/** What each of jsonc-parser's error codes means to someone editing the file. */
const JSON_PROBLEMS: Partial<Record<ParseErrorCode, string>> = {
  [ParseErrorCode.InvalidSymbol]: "unexpected character: a value is a string in double quotes, a number, true, false, null, { … } or [ … ]",
  [ParseErrorCode.InvalidNumberFormat]: "this number is not written as JSON writes numbers",
  [ParseErrorCode.PropertyNameExpected]: "expected a field name in double quotes (is there a comma before a closing '}'?)",
  [ParseErrorCode.ValueExpected]: "expected a value (is there a comma before a closing ']', or a value missing?)",
  [ParseErrorCode.ColonExpected]: "expected ':' after the field name",
  [ParseErrorCode.CommaExpected]: "expected ',' between two values",
  [ParseErrorCode.CloseBraceExpected]: "expected '}' to close an object",
  [ParseErrorCode.CloseBracketExpected]: "expected ']' to close a list",
  [ParseErrorCode.EndOfFileExpected]: "expected the end of the file after the closing '}'",
  [ParseErrorCode.InvalidCommentToken]: "JSON has no comments",
  [ParseErrorCode.UnexpectedEndOfComment]: "JSON has no comments",
  [ParseErrorCode.UnexpectedEndOfString]: "a string is not closed by '\"'",
  [ParseErrorCode.UnexpectedEndOfNumber]: "a number ends too early",
  [ParseErrorCode.InvalidUnicode]: "a \\u escape needs four hexadecimal digits",
  [ParseErrorCode.InvalidEscapeCharacter]: "a string has an unknown escape after '\\' (write \\\\ for a backslash)",
  [ParseErrorCode.InvalidCharacter]: "a string holds a raw control character such as a tab or line break (write \\t or \\n)",
};

/** Where the file stops being JSON and what was expected there, never quoting the file itself. */
export function describeJsonError(text: string): string {
  const errors: ParseError[] = [];
  parseJsonc(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  const first = errors[0];
  if (!first) return "it cannot be read as JSON";
  const before = text.slice(0, first.offset).split("\n");
  const where = `line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`;
  return `${where}: ${JSON_PROBLEMS[first.error] ?? "this is not JSON"}`;
}

export function jsonPath(segments: readonly PropertyKey[]): string {
  let out = "";
  for (const s of segments) {
    if (typeof s === "number") out += `[${s}]`;
    else out += out ? `.${String(s)}` : String(s);
  }
  return out;
}

function valueAt(root: unknown, segments: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const s of segments) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[s as string];
  }
  return v;
}

function showValue(value: unknown, segments: readonly PropertyKey[]): string {
  if (segments.some((s) => typeof s === "string" && SECRET_KEYS.has(s))) return "(secret)";
  const json = JSON.stringify(value);
  return json.length > 80 ? `${json.slice(0, 77)}…` : json;
}

const ARTICLE: Record<string, string> = { object: "an object", array: "a list", string: "a string", number: "a number", boolean: "true or false" };

function formatIssue(issue: z.core.$ZodIssue, raw: unknown): ConfigIssue {
  const segs = issue.path;
  if (issue.code === "unrecognized_keys") {
    const known = knownKeys(segs);
    return {
      path: jsonPath(segs) || "(top level)",
      message: `unknown field${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}${known ? `; expected ${known}` : ""}`,
    };
  }
  const value = valueAt(raw, segs);
  const where = jsonPath(segs) || "(top level)";
  if (value === undefined) {
    const msg = issue.message.startsWith("is required") ? issue.message : "is required";
    return { path: where, message: msg };
  }
  let message = issue.message;
  if (issue.code === "invalid_type" && message.startsWith("Invalid input")) message = `is not ${ARTICLE[issue.expected] ?? issue.expected}`;
  return { path: where, message: `${showValue(value, segs)} ${message}` };
}

/** The fields an object accepts, for "unknown field" messages. */
function knownKeys(segs: readonly PropertyKey[]): string | undefined {
  let schema: z.ZodType = configSchema;
  for (const s of segs) {
    const def = (schema as unknown as { def: { type: string; shape?: Record<string, z.ZodType>; element?: z.ZodType; innerType?: z.ZodType } }).def;
    if (def.type === "default" || def.type === "optional" || def.type === "prefault") schema = def.innerType!;
    const d2 = (schema as unknown as { def: { type: string; shape?: Record<string, z.ZodType>; element?: z.ZodType } }).def;
    if (typeof s === "number" && d2.element) schema = d2.element;
    else if (typeof s === "string" && d2.shape?.[s]) schema = d2.shape[s]!;
    else return undefined;
  }
  let def = (schema as unknown as { def: { type: string; shape?: Record<string, unknown>; innerType?: z.ZodType } }).def;
  while ((def.type === "default" || def.type === "optional" || def.type === "prefault") && def.innerType) {
    def = (def.innerType as unknown as { def: typeof def }).def;
  }
  return def.shape
    ? Object.keys(def.shape)
        .filter((k) => k !== "$schema")
        .join(", ")
    : undefined;
}

/** The shipped example's config, whose keys were copied into many a config before their owner's own. */
const EXAMPLE_CONFIG = path.join(packageRoot, "examples", "broker.json");

/** Keys of examples/broker.json left in the config: whoever holds their private half could log in, and their owner cannot. */
function exampleKeyWarnings(keys: readonly string[]): string[] {
  let example: string[];
  try {
    example = ((JSON.parse(readFileSync(EXAMPLE_CONFIG, "utf8")) as { user?: { sshKeys?: string[] } }).user?.sshKeys ?? []).map((k) => k.split(" ")[1]!);
  } catch {
    return [];
  }
  return keys.flatMap((k, i) =>
    example.includes(k.split(" ")[1]!)
      ? [
          `user.sshKeys[${i}] is the example key of examples/broker.json, not yours: put your own public key there (the line of ~/.ssh/id_ed25519.pub, say), or you cannot log in with a key`,
        ]
      : [],
  );
}

/** Turns secret references into Secrets, recording what is wrong under the field's path. */
class SecretResolver {
  constructor(
    private readonly baseDir: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly issues: ConfigIssue[],
    private readonly warnings: string[],
  ) {}

  resolve(ref: SecretRef, where: string, check: (value: string) => string | undefined = minLength(8)): Secret {
    let value: string | undefined;
    let origin: string;
    let sourceFile: string | undefined;
    if (typeof ref === "string") {
      value = ref;
      origin = "literal";
      this.warnings.push(
        `${where} is written in the config in plain text: use { "env": "NAME" } or { "file": "path" } so that the config can be shared or committed`,
      );
    } else if ("env" in ref) {
      origin = `env ${ref.env}`;
      value = this.env[ref.env];
      if (value === undefined) {
        // Under sudo the variable is most often set, but in the shell sudo left behind.
        const sudo = this.env.SUDO_USER
          ? `: sudo does not pass the environment on; run it as sudo -E (or sudo --preserve-env=${ref.env}), or refer to a file instead ({ "file": "path" })`
          : "";
        this.issues.push({ path: where, message: `environment variable ${ref.env} is not set${sudo}` });
      } else if (value === "") this.issues.push({ path: where, message: `environment variable ${ref.env} is empty` });
    } else {
      const file = path.resolve(this.baseDir, ref.file);
      origin = `file ${ref.file}`;
      sourceFile = file;
      try {
        const stat = statSync(file);
        if (!stat.isFile()) throw Object.assign(new Error("not a regular file"), { code: "EISDIR" });
        const readers = [stat.mode & 0o040 ? "its group" : "", stat.mode & 0o004 ? "every user" : ""].filter(Boolean).join(" and ");
        if (readers) {
          this.warnings.push(`${where} comes from file ${ref.file}, which ${readers} can read (mode ${(stat.mode & 0o777).toString(8)}): chmod 600 ${file}`);
        }
        // Editors add a final newline; it is not part of the secret.
        value = readFileSync(file, "utf8").replace(/\r?\n$/, "");
        if (value === "") this.issues.push({ path: where, message: `file ${ref.file} is empty` });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        this.issues.push({
          path: where,
          message: code === "ENOENT" ? `file ${ref.file} does not exist (looked for ${file})` : `cannot read file ${ref.file}: ${(err as Error).message}`,
        });
      }
    }
    if (value) {
      const problem = /[\r\n\u0000]/.test(value) ? "contains a line break or NUL character" : check(value);
      if (problem) this.issues.push({ path: where, message: `${origin === "literal" ? "(secret)" : `(secret from ${origin})`} ${problem}` });
    }
    return new Secret(value ?? "", origin, sourceFile);
  }
}

function minLength(n: number) {
  return (v: string) => (v.length < n ? `is shorter than ${n} characters` : undefined);
}

/**
 * ddclient reads password='…' raw, from the first quote to the last, before comments are cut (sub
 * _read_config, "parsing passwords is special"), so '#' ',' '=' '"' are carried. Refused: ' and \
 * (without them the line means the same to ddclient's general parser, should a version not take
 * the password out first), white space (it could start another match of that rule) and control or
 * non-ASCII characters (3.11+ pass the secret to curl through escape_curl_param, whose /\v/ turns
 * byte 0x85 of UTF-8 text into "\v").
 */
function ddclientSafe(v: string): string | undefined {
  return (
    minLength(8)(v) ??
    (/^[\x21-\x7e]+$/.test(v) && !/['\\]/.test(v)
      ? undefined
      : "contains white space, a single quote, a backslash, a control or a non-ASCII character, which ddclient's config cannot carry: use printable ASCII without ' and \\")
  );
}

/** ddclient puts the freemyip token into the update URL as it is: only URL-safe characters keep the request intact. */
export function freemyipToken(v: string): string | undefined {
  return (
    ddclientSafe(v) ??
    (/^[A-Za-z0-9._~-]+$/.test(v)
      ? undefined
      : "contains characters other than letters, digits, '.', '_', '~' and '-', which ddclient would put into freemyip's update URL as they are: copy the token exactly as freemyip shows it")
  );
}

export function wpaPassphrase(v: string): string | undefined {
  if (!/^[\x20-\x7e]*$/.test(v)) return "contains characters other than printable ASCII, which WPA passphrases cannot";
  if (v.length < 8 || v.length > 63) return "is not 8 to 63 characters long, as WPA requires";
  return undefined;
}

function toModel(c: ParsedConfig, configPath: string, r: SecretResolver): Model {
  // Secrets are resolved in the config's order, so that their problems are listed in it.
  const image = imageModel(c, configPath);
  const user = { name: c.user.name, password: r.resolve(c.user.password, "user.password"), sshKeys: c.user.sshKeys, passwordSsh: c.user.passwordSsh };
  const network = networkModel(c, r);
  const mqtt = mqttModel(c, r);
  const ddns = ddnsModel(c, r);
  return {
    configPath,
    configDir: path.dirname(configPath),
    image,
    user,
    network,
    mqtt,
    tls: tlsModel(c),
    ...(ddns ? { ddns } : {}),
    ...(c.nodeRed.enabled ? { nodeRed: nodeRedModel(c.nodeRed, (ref, where, check) => r.resolve(ref, where, check)) } : {}),
    ...(c.updates.enabled ? { updates: c.updates.reboot ? { rebootTime: c.updates.reboot.time } : {} } : {}),
    ...(c.firewall.enabled ? { firewall: { lan: c.firewall.lan ?? [subnetOf(network.address, network.prefix)] } } : {}),
  };
}

/** The image section, with the base stages' directories relative to the config's. */
function imageModel(c: ParsedConfig, configPath: string): Model["image"] {
  const { raspiosDate, ...imageFields } = c.image;
  return {
    ...imageFields,
    ...(raspiosDate !== undefined ? { raspiosDate } : {}),
    baseStages: (c.image.baseStages ?? []).map((d) => path.resolve(path.dirname(path.resolve(configPath)), d)),
  };
}

/** The address split from its prefix length, and the Wi-Fi passphrase resolved. */
function networkModel(c: ParsedConfig, r: SecretResolver): Model["network"] {
  const [ip, prefix] = c.network.address.split("/") as [string, string];
  return {
    interface: c.network.interface,
    address: ip,
    prefix: Number(prefix),
    gateway: c.network.gateway,
    dns: c.network.dns,
    ...(c.network.wifi
      ? {
          wifi: {
            ssid: c.network.wifi.ssid,
            country: c.network.wifi.country,
            passphrase: r.resolve(c.network.wifi.passphrase, "network.wifi.passphrase", wpaPassphrase),
          },
        }
      : {}),
  };
}

function mqttModel(c: ParsedConfig, r: SecretResolver): Model["mqtt"] {
  const ws = c.mqtt.websockets;
  return {
    lanPort: c.mqtt.lanPort,
    tlsPort: c.mqtt.tlsPort,
    persistence: c.mqtt.persistence,
    autosaveInterval: c.mqtt.autosaveInterval ?? AUTOSAVE_INTERVAL_S,
    ...(ws ? { websockets: { tlsPort: ws.tlsPort, ...(ws.lan ? { lanPort: ws.lanPort } : {}) } } : {}),
    users: c.mqtt.users.map((u, i) => ({
      name: u.name,
      password: r.resolve(u.password, `mqtt.users[${i}].password`),
      ...(u.topics ? { topics: u.topics } : {}),
    })),
  };
}

/** The names and addresses the server certificate holds: the domain, the extra names, HOSTNAME.local and the Pi's address. */
function tlsModel(c: ParsedConfig): Model["tls"] {
  const [ip] = c.network.address.split("/") as [string, string];
  const extraDns = c.tls.extraNames.filter((n) => !IPV4_RE.test(n)).map((n) => n.toLowerCase());
  const extraIps = c.tls.extraNames.filter((n) => IPV4_RE.test(n));
  const dnsNames = [...new Set([c.tls.domain.toLowerCase(), ...extraDns, `${c.image.hostname.toLowerCase()}.local`])];
  const ipAddresses = [...new Set([ip, ...extraIps])];
  return {
    domain: c.tls.domain.toLowerCase(),
    dnsNames,
    ipAddresses,
    ...(c.tls.mode === "acme" && c.tls.acme ? { acme: { email: c.tls.acme.email, server: c.tls.acme.server } } : {}),
  };
}

/** freemyip's or a dyndns2 server's settings, its secret resolved; the name updated is tls.domain unless ddns.hostname says otherwise. */
function ddnsModel(c: ParsedConfig, r: SecretResolver): Ddns | undefined {
  if (!c.ddns) return undefined;
  const hostname = (c.ddns.hostname ?? c.tls.domain).toLowerCase();
  return c.ddns.provider === "freemyip"
    ? { provider: "freemyip", token: r.resolve(c.ddns.token, "ddns.token", freemyipToken), hostname, interval: c.ddns.interval, ipLookup: c.ddns.ipLookup }
    : {
        provider: "dyndns2",
        server: c.ddns.server,
        login: c.ddns.login,
        password: r.resolve(c.ddns.password, "ddns.password", ddclientSafe),
        hostname,
        interval: c.ddns.interval,
        ipLookup: c.ddns.ipLookup,
      };
}
