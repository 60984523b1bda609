/**
 * The questions of pibake init on a terminal, in Raspberry Pi Imager's order
 * of things: what the Pi is called on the Internet, where it sits at home,
 * who logs in, then the details. Each proposal is taken with Enter; each
 * answer is checked at once (checks.ts) and asked again if it is wrong.
 */
import { confirm, input, password, select } from "@inquirer/prompts";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import * as check from "./checks.js";
import { mqttSecretFile, strongPassword, type Answers, type NetworkProposal, type SecretAnswer } from "./plan.js";

export interface Proposals {
  domain?: string | undefined;
  ddnsTokenFile?: string | undefined;
  /** Given with --address: otherwise the network proposal's. */
  address?: string | undefined;
  network: NetworkProposal;
  /** Given with --gateway: otherwise the network proposal's. */
  gateway?: string | undefined;
  userName: string;
  mqttUsers: string[];
  wifiSsid?: string | undefined;
  wifiPassphraseFile?: string | undefined;
  country: string;
  /** A .pub file given with --ssh-key: not asked then. */
  sshKeyFile?: string | undefined;
  nodeRed: boolean;
  timezone: string;
  locale: string;
  keymap: string;
}

/** inquirer's validate: true, or the problem to show under the answer (trimmed, as it is kept). */
const by = (c: check.Check) => (v: string) => c(v.trim()) ?? true;
/** The same for a password or passphrase, kept as typed: a space may be part of it. */
const exactly = (c: check.Check) => (v: string) => c(v) ?? true;

/** A public key in ~/.ssh, as the list shows it. */
export interface OfferedKey {
  file: string;
  line: string;
}

/** The valid public keys of ~/.ssh (the first line of each *.pub), id_ed25519 first. */
export function sshKeysIn(home: string): OfferedKey[] {
  const dir = path.join(home, ".ssh");
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".pub"));
  } catch {
    return [];
  }
  const keys = names.flatMap((n) => {
    try {
      const line = readFileSync(path.join(dir, n), "utf8").split("\n")[0]!.trim();
      return check.checkSshKey(line) ? [] : [{ file: path.join(dir, n), line }];
    } catch {
      return [];
    }
  });
  return keys.sort(
    (a, b) => Number(path.basename(b.file) === "id_ed25519.pub") - Number(path.basename(a.file) === "id_ed25519.pub") || a.file.localeCompare(b.file),
  );
}

/** A password typed twice, or generated when the first answer is empty. */
async function newPassword(message: string, c: check.Check = check.checkPassword): Promise<SecretAnswer> {
  for (;;) {
    const first = await password({ message: `${message} (Enter: a strong random one)`, mask: "*", validate: (v) => v === "" || exactly(c)(v) });
    if (first === "") return { value: strongPassword(), generated: true };
    const again = await password({ message: "The same again", mask: "*" });
    if (again === first) return { value: first, generated: false };
    process.stdout.write("The two did not match: once more.\n");
  }
}

/** The prefix length of the proposal when the answer has none ("192.168.1.20" is "192.168.1.20/24"). */
function withPrefix(v: string, proposal: string): string {
  const a = v.trim();
  return a.includes("/") ? a : `${a}/${proposal.split("/")[1]}`;
}

/** `dir`: the config's, where the secret files go. */
export async function askAll(p: Proposals, home: string, dir: string): Promise<Answers> {
  try {
    return await ask(p, home, dir);
  } catch (err) {
    // Ctrl-C on a question: inquirer rejects; nothing has been written.
    if (err instanceof Error && err.name === "ExitPromptError") throw new PibakeError("cancelled: nothing was written", 130);
    throw err;
  }
}

async function ask(p: Proposals, home: string, dir: string): Promise<Answers> {
  const { domain, ddnsToken } = await askDdns(p);
  const { address, gateway } = await askAddress(p);
  const { userName, userPassword } = await askUser(p);
  const mqttUsers = await askMqttUsers(p, dir);
  const { wifi, iface } = await askWifi(p);
  const sshKey = await askSshKey(p, home);
  const nodeRed = await confirm({ message: "Node-RED on the Pi?", default: p.nodeRed });
  const timezone = (await input({ message: "Time zone", default: p.timezone, validate: by(check.checkTimezone) })).trim();
  const locale = (await input({ message: "Locale", default: p.locale, validate: by(check.checkLocale) })).trim();
  const keymap = (await input({ message: "Keyboard layout (XKB code)", default: p.keymap, validate: by(check.checkKeymap) })).trim();
  return { domain, ddnsToken, address, gateway, interface: iface, userName, userPassword, mqttUsers, wifi, sshKey, nodeRed, timezone, locale, keymap };
}

/** The public name, and freemyip's token for it unless a file holds it already. */
async function askDdns(p: Proposals): Promise<Pick<Answers, "domain" | "ddnsToken">> {
  const domain = (
    await input({ message: "Public name of the broker (your freemyip domain)", default: p.domain ?? "", required: true, validate: by(check.checkDomain) })
  ).trim();
  const ddnsToken: SecretAnswer = p.ddnsTokenFile
    ? { file: p.ddnsTokenFile }
    : {
        value: (await password({ message: "freemyip token (from freemyip.com's page of the domain)", mask: "*", validate: by(check.checkToken) })).trim(),
        generated: false,
      };
  return { domain, ddnsToken };
}

/** The Pi's static address and the router's, proposed from this machine's network. */
async function askAddress(p: Proposals): Promise<Pick<Answers, "address" | "gateway">> {
  const proposed = p.address ?? p.network.address;
  const from = !p.address && p.network.from ? ` (from this machine's ${p.network.from}; best outside the router's DHCP range)` : "";
  const address = withPrefix(
    await input({
      message: `The Pi's static address with prefix length${from}`,
      default: proposed,
      validate: (v) => by(check.checkAddress)(withPrefix(v, proposed)),
    }),
    proposed,
  );
  const gatewayProposal = p.gateway ?? (check.checkGateway(address)(p.network.gateway) ? undefined : p.network.gateway);
  const gateway = (
    await input({ message: "The router's address (gateway)", default: gatewayProposal, required: true, validate: by(check.checkGateway(address)) })
  ).trim();
  return { address, gateway };
}

async function askUser(p: Proposals): Promise<Pick<Answers, "userName" | "userPassword">> {
  const userName = (await input({ message: "Name of the Pi's user (who logs in)", default: p.userName, validate: by(check.checkUserName) })).trim();
  const userPassword = await newPassword(`Password of ${userName}`);
  return { userName, userPassword };
}

/** MQTT users until the user says there are no more: each name once, and not one whose secret file exists. */
async function askMqttUsers(p: Proposals, dir: string): Promise<Answers["mqttUsers"]> {
  const mqttUsers: Answers["mqttUsers"] = [];
  for (let i = 0; ; i++) {
    const taken = (v: string) =>
      mqttUsers.some((u) => u.name === v)
        ? `"${v}" is already an MQTT user`
        : existsSync(path.join(dir, mqttSecretFile(v)))
          ? `${mqttSecretFile(v)} already exists, and pibake init replaces no file: choose another name`
          : undefined;
    const name = (
      await input({
        message: `MQTT user ${i + 1}: name`,
        default: p.mqttUsers[i] ?? (i === 0 ? "home" : undefined),
        required: true,
        validate: (v) => (by(check.checkMqttName)(v) === true ? (taken(v.trim()) ?? true) : by(check.checkMqttName)(v)),
      })
    ).trim();
    mqttUsers.push({ name, password: await newPassword(`Password of MQTT user ${name}`) });
    if (!(await confirm({ message: "Another MQTT user?", default: i + 1 < p.mqttUsers.length }))) break;
  }
  return mqttUsers;
}

/** Wi-Fi, if the Pi uses it: the network, its passphrase and country, and which connection gets the static address. */
async function askWifi(p: Proposals): Promise<{ wifi: Answers["wifi"]; iface: string }> {
  if (!(await confirm({ message: "Wi-Fi on the Pi?", default: p.wifiSsid !== undefined }))) return { wifi: undefined, iface: "eth0" };
  const ssid = await input({ message: "Wi-Fi network name (SSID)", default: p.wifiSsid, required: true, validate: (v) => check.checkSsid(v) ?? true });
  const passphrase: SecretAnswer = p.wifiPassphraseFile
    ? { file: p.wifiPassphraseFile }
    : { value: await password({ message: "Wi-Fi passphrase", mask: "*", validate: exactly(check.checkPassphrase) }), generated: false };
  const country = (
    await input({ message: "Wi-Fi country (two letters, e.g. DE, GB, US)", default: p.country, validate: (v) => by(check.checkCountry)(v.toUpperCase()) })
  )
    .trim()
    .toUpperCase();
  const iface = await select({
    message: "Which connection gets the static address?",
    choices: [
      { name: "Wi-Fi (wlan0): the Pi has no cable", value: "wlan0" },
      { name: "Ethernet (eth0): Wi-Fi takes an address from the router", value: "eth0" },
    ],
  });
  return { wifi: { ssid, passphrase, country }, iface };
}

/** The key given with the command, or one of those in ~/.ssh, or none. */
async function askSshKey(p: Proposals, home: string): Promise<string | undefined> {
  if (p.sshKeyFile) return readFileSync(p.sshKeyFile, "utf8").split("\n")[0]!.trim();
  const keys = sshKeysIn(home);
  if (keys.length === 0) process.stdout.write(`No SSH public key in ${path.join(home, ".ssh")} (make one with ssh-keygen -t ed25519).\n`);
  return select<string | undefined>({
    message: "SSH key to log in with",
    choices: [
      ...keys.map((k) => ({ name: `${path.basename(k.file)}  ${k.line.split(" ").slice(2).join(" ") || k.line.split(" ")[0]}`, value: k.line })),
      { name: "none: SSH takes the password (weaker: anyone at home may guess it)", value: undefined },
    ],
  });
}
