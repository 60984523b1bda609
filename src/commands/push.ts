import os from "node:os";
import path from "node:path";
import { existsSync } from "node:fs";
import { PibakeError } from "../errors.js";
import { invoker } from "../host/sudo.js";
import { createOutput } from "../ui/output.js";
import { createPrompter, isYes } from "../ui/prompt.js";
import { runPush } from "../push/index.js";
import { openConfig } from "../pipeline.js";
import { configArgument, last, portOption } from "./options.js";

export interface PushOptions {
  yes?: boolean;
  state?: string;
  sshKey?: string;
  port?: string | number;
  knownHosts?: string;
  allowNetworkChange?: boolean;
  dryRun?: boolean;
}

/** Whose ~/.ssh holds the default key: under sudo the invoking user's (ssh runs as them), not root's. */
function sshHome(): string {
  const user = invoker();
  if (!user) return os.homedir();
  if (!user.home)
    throw new PibakeError(
      `under sudo, pibake push uses the SSH key of ${user.name}, whose home the user database does not name: name the key with --ssh-key FILE`,
      2,
    );
  return user.home;
}

/** pibake push CONFIG HOST: bring a running Pi to what the config says, without a new image. */
export async function pushCommand(configPath: string, host: string, opts: PushOptions): Promise<void> {
  const out = createOutput();
  const port = portOption(opts.port, "--port") ?? 22;
  if (!/^[A-Za-z0-9][A-Za-z0-9.:_-]*$/.test(host)) throw new PibakeError(`HOST ${JSON.stringify(host)} is not a host name or address`, 2);
  const key = path.resolve(last(opts.sshKey) ?? path.join(sshHome(), ".ssh", "id_ed25519"));
  if (!existsSync(key)) throw new PibakeError(`no SSH key at ${key}: name the private key of one of user.sshKeys with --ssh-key FILE`, 2);
  const interactive = process.stdin.isTTY === true && process.stderr.isTTY === true;
  if (!opts.yes && !opts.dryRun && !interactive)
    throw new PibakeError("pibake push asks before it changes the Pi, and there is no terminal to ask on: pass --yes", 2);

  const { model, state } = openConfig(configPath, out, opts.state);
  const knownHosts = path.resolve(last(opts.knownHosts) ?? state.file("known_hosts"));
  await runPush({
    model,
    state,
    host,
    port,
    key,
    knownHosts,
    allowNetworkChange: opts.allowNetworkChange === true,
    dryRun: opts.dryRun === true,
    out,
    buildCommand: `pibake build ${configArgument(model)}`,
    confirm: async () => {
      if (opts.yes) return true;
      const prompter = createPrompter({ input: process.stdin, output: process.stderr });
      try {
        return isYes(await prompter.ask(`Push these changes to ${host}? [y/N] `));
      } finally {
        prompter.close();
      }
    },
  });
}
