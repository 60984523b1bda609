import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { withCleanup } from "../cleanup.js";
import { checkConfig } from "../config/load.js";
import { ConfigError, PibakeError } from "../errors.js";
import { schemaFile } from "../paths.js";
import { createOutput } from "../ui/output.js";
import { askAll, type Proposals } from "../init/ask.js";
import * as check from "../init/checks.js";
import {
  FIXED_SECRET_FILES,
  inMemory,
  planConfig,
  proposeCountry,
  proposeKeymap,
  proposeLocale,
  proposeNetwork,
  proposeTimezone,
  SECRETS_DIR,
  strongPassword,
  type Answers,
  type InitPlan,
  type SecretAnswer,
} from "../init/plan.js";
import { existsError, firstExisting, writeAll } from "../init/write.js";
import { loadAndWarn } from "../pipeline.js";
import { last } from "./options.js";

export interface InitOptions {
  domain?: string;
  ddnsTokenFile?: string;
  address?: string;
  gateway?: string;
  user?: string;
  mqttUser?: string | string[];
  sshKey?: string;
  wifiSsid?: string;
  wifiPassphraseFile?: string;
  wifiCountry?: string;
  nodeRed?: boolean;
  timezone?: string;
}

/** The flags a config cannot be made without, when there is no terminal to ask. */
const NEEDED: [keyof Proposals, string][] = [
  ["domain", "--domain"],
  ["ddnsTokenFile", "--ddns-token-file"],
  ["address", "--address"],
  ["gateway", "--gateway"],
];

/** cac turns "1234" into a number: every value here is text. */
const text = (v: unknown): string | undefined => (v === undefined || v === true ? undefined : String(last(v as unknown[])));

/**
 * pibake init [FILE]: a config and its secrets from a few questions on a
 * terminal, or from flags without one. Nothing is written until every answer
 * is in and the whole config checks out, and nothing that exists is replaced.
 */
export async function initCommand(file: string | undefined, opts: InitOptions, stdin: { isTTY?: boolean } = process.stdin): Promise<void> {
  const out = createOutput();
  const configPath = path.resolve(file ?? "broker.json");
  const dir = path.dirname(configPath);
  if (existsSync(configPath)) throw existsError(configPath, "a config");
  if (!existsSync(dir)) throw new PibakeError(`${dir} does not exist: make the directory first (mkdir -p ${dir})`, 2);
  const taken = firstExisting(Object.values(FIXED_SECRET_FILES).map((f) => path.join(dir, f)));
  if (taken) throw existsError(taken, "a secret file");

  const env = process.env;
  const locale = proposeLocale(env);
  const home = os.homedir();
  const proposals: Proposals = {
    domain: text(opts.domain),
    ddnsTokenFile: givenFile(text(opts.ddnsTokenFile), "--ddns-token-file"),
    address: text(opts.address),
    network: proposeNetwork(os.networkInterfaces(), readOr("/proc/net/route")),
    gateway: text(opts.gateway),
    userName: text(opts.user) ?? ownName(),
    mqttUsers: [opts.mqttUser ?? []].flat().map(String),
    wifiSsid: text(opts.wifiSsid),
    wifiPassphraseFile: givenFile(text(opts.wifiPassphraseFile), "--wifi-passphrase-file"),
    country: text(opts.wifiCountry)?.toUpperCase() ?? proposeCountry(locale),
    sshKeyFile: givenFile(text(opts.sshKey), "--ssh-key"),
    nodeRed: opts.nodeRed !== false,
    timezone: text(opts.timezone) ?? proposeTimezone(Intl.DateTimeFormat().resolvedOptions().timeZone),
    locale,
    keymap: proposeKeymap(locale),
  };

  let answers: Answers;
  if (stdin.isTTY) {
    process.stdout.write(`pibake init: a few questions for ${configPath}. Enter takes the proposal; Ctrl-C stops, and nothing is written.\n`);
    answers = await askAll(proposals, home, dir);
  } else {
    answers = fromFlags(proposals);
  }
  if (!answers.sshKey)
    out.warn(
      "no SSH key: SSH takes the user's password (user.passwordSsh is true); anyone who can reach the Pi may try to guess it. Add your public key to user.sshKeys and set passwordSsh to false when you can",
    );

  const schemaRef = existsSync(schemaFile) ? path.relative(dir, schemaFile) : undefined;
  const plan = planConfig(answers, configPath, schemaRef);
  precheck(plan, configPath);
  // An MQTT user's file is known only now; the link in writeAll refuses a file made meanwhile.
  const clash = firstExisting(plan.secrets.map((s) => path.join(dir, s.file)));
  if (clash) throw existsError(clash, "a secret file");
  const secretDir = path.join(dir, SECRETS_DIR);
  await withCleanup(async (scope) => {
    writeAll(
      [
        ...plan.secrets.map((s) => ({ file: path.join(dir, s.file), data: `${s.value}\n`, mode: 0o600 })),
        { file: configPath, data: `${JSON.stringify(plan.config, null, 2)}\n`, mode: 0o644 },
      ],
      secretDir,
      scope,
    );
  });
  report(plan, configPath, dir);
  // The very check of pibake validate, on the file as written.
  const { model } = loadAndWarn(configPath, out);
  const shown = file ?? "broker.json";
  out.info(`${shown} is valid: image ${model.image.name} (${model.image.release}, ${model.image.arch}), domain ${model.tls.domain}`);
  out.info(
    `\nNext: see what the build would do and whether this machine has what it needs (no root, nothing written):\n  pibake build ${shown} --dry-run\nthen build the image (as root, for the loop devices and the chroot):\n  sudo -E pibake build ${shown}`,
  );
}

/** This machine's user name when it would do on the Pi (not root, not a system account); else admin. */
function ownName(): string {
  try {
    const name = os.userInfo().username;
    return check.checkUserName(name) ? "admin" : name;
  } catch {
    // A uid without a passwd entry (a container's).
    return "admin";
  }
}

function readOr(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** A file named by a flag: absolute, and there. */
function givenFile(file: string | undefined, flag: string): string | undefined {
  if (file === undefined) return undefined;
  const abs = path.resolve(file);
  if (!existsSync(abs)) throw new PibakeError(`${flag} ${file}: no such file`, 2);
  return abs;
}

/** Without a terminal: the flags, with generated passwords; a flag missing or wrong is a usage error naming it. */
function fromFlags(p: Proposals): Answers {
  const missing = NEEDED.filter(([key]) => p[key] === undefined).map(([, flag]) => flag);
  if (p.wifiSsid && !p.wifiPassphraseFile) missing.push("--wifi-passphrase-file");
  if (missing.length > 0) {
    throw new PibakeError(
      `pibake init has no terminal to ask on, so it needs ${missing.length > 1 ? `${missing.slice(0, -1).join(", ")} and ${missing.at(-1)}` : missing[0]} (see pibake init --help)`,
      2,
    );
  }
  const generated = (): SecretAnswer => ({ value: strongPassword(), generated: true });
  const problems = [
    ["--domain", check.checkDomain(p.domain!)],
    ["--address", check.checkAddress(p.address!)],
    ["--gateway", check.checkAddress(p.address!) ? undefined : check.checkGateway(p.address!)(p.gateway!)],
    ["--user", check.checkUserName(p.userName)],
    ...p.mqttUsers.map((u) => ["--mqtt-user", check.checkMqttName(u)]),
    ["--wifi-ssid", p.wifiSsid === undefined ? undefined : check.checkSsid(p.wifiSsid)],
    ["--wifi-country", p.wifiSsid === undefined ? undefined : check.checkCountry(p.country)],
    ["--timezone", check.checkTimezone(p.timezone)],
  ].filter(([, problem]) => problem);
  if (problems.length > 0) throw new PibakeError(`pibake init: ${problems.map(([flag, problem]) => `${flag}: ${problem}`).join("; ")}`, 2);
  return {
    domain: p.domain!,
    ddnsToken: { file: p.ddnsTokenFile! },
    address: p.address!,
    gateway: p.gateway!,
    interface: p.wifiSsid ? "wlan0" : "eth0",
    userName: p.userName,
    userPassword: generated(),
    mqttUsers: (p.mqttUsers.length > 0 ? p.mqttUsers : ["home"]).map((name) => ({ name, password: generated() })),
    wifi: p.wifiSsid ? { ssid: p.wifiSsid, passphrase: { file: p.wifiPassphraseFile! }, country: p.country } : undefined,
    sshKey: p.sshKeyFile ? readFileSync(p.sshKeyFile, "utf8").split("\n")[0]!.trim() : undefined,
    nodeRed: p.nodeRed,
    timezone: p.timezone,
    locale: p.locale,
    keymap: p.keymap,
  };
}

/** The whole config checked before anything is written: a refusal here leaves the directory as it was. */
function precheck(plan: InitPlan, configPath: string): void {
  const { config, env } = inMemory(plan);
  try {
    checkConfig(config, configPath, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new PibakeError(
      `these answers do not make a valid config, so nothing was written:\n${err.issues.map((i) => `  ${i.path}: ${i.message}`).join("\n")}`,
      2,
    );
  }
}

/** Where everything went, and the generated passwords, once. */
function report(plan: InitPlan, configPath: string, dir: string): void {
  const lines = [
    `Wrote ${configPath}${plan.secrets.length > 0 ? ` and ${plan.secrets.length} secret file${plan.secrets.length === 1 ? "" : "s"} in ${path.join(dir, SECRETS_DIR)}/ (only you can read them)` : ""}.`,
  ];
  const generated = plan.secrets.filter((s) => s.generated);
  if (generated.length > 0) {
    lines.push("Generated passwords, shown this once (each is also in its file):");
    const w = Math.max(...generated.map((s) => s.label.length));
    for (const s of generated) lines.push(`  ${s.label.padEnd(w)}  ${s.value}  ${s.file}`);
  }
  // Straight to the terminal: the output module would hide them, as it hides every secret it knows.
  process.stdout.write(lines.join("\n") + "\n");
}
