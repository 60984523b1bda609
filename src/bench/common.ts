/** What the bench sections that run `pibake build` share: one config, its secrets, and running the CLI as a user would. */
import { execa } from "execa";
import { readdirSync } from "node:fs";
import path from "node:path";
import { packageRoot } from "../paths.js";

export const SECRETS = {
  PIBAKE_BENCH_USER_PW: "bench-User-Passw0rd",
  PIBAKE_BENCH_MQTT_PW: "bench-Mqtt-Secret-1",
  PIBAKE_BENCH_DDNS: "benchDdnsToken12345",
};

/**
 * The bench's config, like examples/broker.json; `nodeRed` as the example has it (on, installed on
 * first boot, the editor password generated) or off.
 */
export function benchConfig(domain: string, nodeRed = false): Record<string, unknown> {
  return {
    image: {
      name: "bench-broker",
      release: "trixie",
      arch: "arm64",
      hostname: "broker",
      timezone: "Europe/Berlin",
      locale: "en_GB.UTF-8",
      keyboard: { keymap: "de", layout: "German" },
    },
    user: {
      name: "admin",
      password: { env: "PIBAKE_BENCH_USER_PW" },
      sshKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8uDdyWgXwb6UGyYumFvVxsbYVKcFiIMEn8vl2Nny5F bench@host"],
    },
    network: { interface: "eth0", address: "192.168.1.10/24", gateway: "192.168.1.1", dns: ["192.168.1.1"] },
    mqtt: { users: [{ name: "home", password: { env: "PIBAKE_BENCH_MQTT_PW" } }] },
    tls: { domain },
    ddns: { provider: "freemyip", token: { env: "PIBAKE_BENCH_DDNS" } },
    nodeRed: nodeRed ? { install: "firstboot", admin: { user: "admin" }, dashboard: "flowfuse", exampleTopic: "home/#" } : { enabled: false },
  };
}

export const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** `pibake build ... --compress none --log-format plain`: its time, its image and its output; throws with the last lines when it fails. */
export async function runPibakeBuild(args: string[], env: Record<string, string>): Promise<{ ms: number; image: string; output: string }> {
  const t0 = Date.now();
  const r = await execa(process.execPath, [path.join(packageRoot, "bin/pibake.js"), ...args, "--compress", "none", "--log-format", "plain"], {
    env: { ...SECRETS, ...env, CI: "true" },
    reject: false,
    stdin: "ignore",
    all: true,
    timeout: 10_800_000,
  });
  const ms = Date.now() - t0;
  const output = String(r.all);
  if (r.exitCode !== 0) throw new Error(`pibake ${args.join(" ")} failed:\n${output.split("\n").slice(-15).join("\n")}`);
  const out = args[args.indexOf("--out") + 1]!;
  return { ms, image: path.join(out, readdirSync(out).find((f) => f.endsWith(".img"))!), output };
}
