import { writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { checkSshCommand, factsCommand, type SshCheckTarget as CheckTarget } from "../src/check/ssh.js";
import { sshCommand, type SshLogin } from "../src/host/ssh.js";
import { pushSsh, type PushTarget } from "../src/push/commands.js";
import { tempDir } from "./helpers/cli.js";

/**
 * The one ssh command line, as data: the builder's table, and the command
 * lines of `pibake check` and `pibake push` against what they ran before
 * there was one builder (recorded from the two builders it replaced).
 */

const common = { address: "broker.lan", port: 2222, user: "admin", connectTimeoutSeconds: 15 };

describe("sshCommand", () => {
  it.each<[string, SshLogin, string]>([
    [
      "pibake's known_hosts, a key alone, kept alive, errors only",
      { ...common, identity: "/k/id", hostKeys: { accept: "new", knownHosts: "/state/known_hosts" }, keepAlive: true, log: "errors" },
      "-o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/state/known_hosts -o GlobalKnownHostsFile=/dev/null" +
        " -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o IdentitiesOnly=yes -o LogLevel=ERROR -i /k/id -p 2222 -l admin -- broker.lan true",
    ],
    [
      "a throwaway known_hosts, ssh's own keys, verbose, more options",
      { ...common, hostKeys: { accept: "any", scratchKnownHosts: "/tmp/s/known_hosts" }, log: "verbose", options: ["PreferredAuthentications=publickey"] },
      "-v -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/tmp/s/known_hosts -o GlobalKnownHostsFile=/dev/null" +
        " -o PreferredAuthentications=publickey -p 2222 -l admin -- broker.lan true",
    ],
    [
      "an address that looks like an option stays the address",
      { ...common, address: "-oProxyCommand=x", hostKeys: { accept: "any", scratchKnownHosts: "/s" } },
      "-o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/s -o GlobalKnownHostsFile=/dev/null -p 2222 -l admin -- -oProxyCommand=x true",
    ],
  ])("%s", (_name, login, line) => {
    const c = sshCommand(login, "true", "asking the Pi");
    expect(c.cmd).toBe("ssh");
    expect(c.args.join(" ")).toBe(line);
    expect(c.okCodes).toBe("any");
    expect(c.what).toBe("asking the Pi");
  });

  it("keeps the remote command one argument, as it was given", () => {
    const c = sshCommand({ ...common, hostKeys: { accept: "new", knownHosts: "/k" } }, "echo 'a b'; true", "x");
    expect(c.args.at(-1)).toBe("echo 'a b'; true");
  });

  it.each([
    ["an option the builder sets (ssh would take the first)", ["batchmode=no"], /set twice/],
    ["the same option twice", ["PreferredAuthentications=publickey", "PreferredAuthentications=password"], /set twice/],
    ["a flag, not Name=value", ["-v"], /not Name=value/],
  ])("refuses %s", (_name, options, message) => {
    expect(() => sshCommand({ ...common, hostKeys: { accept: "any", scratchKnownHosts: "/s" }, options }, "true", "x")).toThrow(message);
  });
});

/** The options of an ssh command line before the host, one string each ("-o X", "-p 22", "-v"), sorted; then the host and the remote command. */
function parse(args: readonly string[]): { options: string[]; host: string; remote: string } {
  const options: string[] = [];
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--") {
      i++;
      break;
    }
    if (!a.startsWith("-")) break;
    if (a === "-v") options.push(a);
    else options.push(`${a} ${args[++i]}`);
  }
  expect(args.length - i).toBe(2);
  return { options: options.sort(), host: args[i]!, remote: args[i + 1]! };
}

/** What ssh itself reads from a command line (-G: its configuration, without connecting), with HOME elsewhere so no ~/.ssh/config is read. */
async function sshConfig(args: readonly string[]): Promise<string> {
  const r = await execa("ssh", ["-G", ...args.slice(0, -1)], { timeout: 10_000, env: { HOME: os.tmpdir() } });
  return r.stdout;
}

describe("the callers' ssh command lines are those of the builders before", () => {
  const { dir, cleanup } = tempDir("pibake-ssh-callers-");
  afterAll(cleanup);
  // ssh -G leaves out identity files that do not exist.
  const key = path.join(dir, "id_ed25519");
  writeFileSync(key, "", { mode: 0o600 });
  const scratch = "/tmp/pibake-check-ssh-X";
  const target: CheckTarget = {
    host: "broker.example.com",
    address: "192.0.2.10",
    port: 2222,
    user: "admin",
    keys: [],
    passwordSsh: false,
    identity: undefined,
    buildCommand: "pibake build",
    ddnsHostname: undefined,
    configDigest: "d",
    pushCommand: "pibake push",
  };
  const facts = factsCommand(undefined);
  const known = ["-o", "UserKnownHostsFile=/tmp/pibake-check-ssh-X/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"];
  const checkBefore = (timeout: number, identity: boolean, extra: string[], remote = "true") => [
    ...(remote === "true" ? ["-v"] : []),
    "-o",
    "BatchMode=yes",
    "-o",
    `ConnectTimeout=${timeout}`,
    ...known,
    "-p",
    "2222",
    "-l",
    "admin",
    ...(identity ? ["-i", key, "-o", "IdentitiesOnly=yes"] : []),
    ...extra,
    "192.0.2.10",
    remote,
  ];

  // pibake check: the key login and the password probe (verbose), and the facts, with and without --ssh-key.
  it.each<[string, string[], readonly string[], number, boolean, string?]>([
    ["key login", checkBefore(8, false, ["-o", "PreferredAuthentications=publickey"]), ["PreferredAuthentications=publickey"], 8000, false],
    [
      "password probe",
      checkBefore(8, false, ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"]),
      ["PubkeyAuthentication=no", "PreferredAuthentications=password,keyboard-interactive"],
      8000,
      false,
    ],
    [
      "key login with --ssh-key, under a second",
      checkBefore(1, true, ["-o", "PreferredAuthentications=publickey"]),
      ["PreferredAuthentications=publickey"],
      300,
      true,
    ],
    ["facts", checkBefore(8, true, ["-o", "PreferredAuthentications=publickey"], facts), ["PreferredAuthentications=publickey"], 8000, true, facts],
  ])("check: %s", async (_name, before, options, ms, identity, remote) => {
    const now = checkSshCommand({ ...target, identity: identity ? key : undefined }, options, ms, scratch, remote).args;
    // The same options (ssh takes the first of an option given twice, and none is), host and remote command;
    // the host now comes after "--".
    expect(parse(now)).toEqual(parse(before));
    expect(now.filter((a) => a !== "--")).toHaveLength(before.length);
    expect(await sshConfig(now)).toBe(await sshConfig(before));
  });

  it("push: the same command line, argument for argument", async () => {
    const t: PushTarget = { host: "broker.lan", port: 2222, user: "admin", key, knownHosts: "/state/known_hosts", connectTimeoutSeconds: 15 };
    const before = [
      "-o",
      "BatchMode=yes",
      "-o",
      "ConnectTimeout=15",
      "-o",
      "StrictHostKeyChecking=accept-new",
      "-o",
      "UserKnownHostsFile=/state/known_hosts",
      "-o",
      "GlobalKnownHostsFile=/dev/null",
      "-o",
      "ServerAliveInterval=10",
      "-o",
      "ServerAliveCountMax=3",
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "LogLevel=ERROR",
      "-i",
      key,
      "-p",
      "2222",
      "-l",
      "admin",
      "--",
      "broker.lan",
      "true",
    ];
    expect(pushSsh(t, "true", "reading the Pi's files").args).toEqual(before);
  });
});
