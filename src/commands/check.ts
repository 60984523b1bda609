import { readFileSync } from "node:fs";
import path from "node:path";
import { isIP } from "node:net";
import { PibakeError } from "../errors.js";
import { redact } from "../host/redact.js";
import { createOutput } from "../ui/output.js";
import { runChecks, websocketsPort, type CheckResult } from "../check/index.js";
import { openConfig } from "../pipeline.js";
import { configArgument, last, portOption } from "./options.js";

export interface CheckOptions {
  lan?: boolean;
  json?: boolean;
  state?: string;
  portTls?: string | number;
  portLan?: string | number;
  portWs?: string | number;
  portNodeRed?: string | number;
  timeout?: string | number;
  dnsServer?: string;
  ssh?: boolean;
  sshKey?: string;
  portSsh?: string | number;
  caFile?: string;
}

function timeoutOption(given: string | number | undefined): number {
  const value = last(given);
  if (value === undefined) return 5000;
  const s = Number(value);
  if (!Number.isFinite(s) || s <= 0 || s > 60) throw new PibakeError(`--timeout ${value} is not a number of seconds between 0 and 60`, 2);
  return Math.round(s * 1000);
}

/** IP or IP:PORT ([IPv6]:PORT), as node:dns setServers takes them. */
function dnsServerOption(given: string | undefined): string | undefined {
  const value = last(given);
  if (value === undefined) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+))(?::(\d{1,5}))?$/.exec(value) ?? (isIP(value) === 6 ? [value, value] : null);
  const ip = m?.[1] ?? m?.[2];
  const port = m?.[3] === undefined ? 53 : Number(m[3]);
  if (!m || !ip || !isIP(ip) || port < 1 || port > 65535)
    throw new PibakeError(`--dns-server ${value} is not an IP address with an optional port (IP, IP:PORT or [IPv6]:PORT)`, 2);
  return value;
}

/** --ca-file: a PEM certificate, read whole (a user's error is named, exit 2). */
function readCaFile(file: string): { pem: string; file: string } {
  let pem: string;
  try {
    pem = readFileSync(file, "utf8");
  } catch (err) {
    throw new PibakeError(`--ca-file ${file}: ${(err as Error).message}`, 2);
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) throw new PibakeError(`--ca-file ${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`, 2);
  return { pem, file };
}

const LABEL: Record<CheckResult["status"], string> = { ok: "ok     ", warning: "warning", failed: "failed " };

/** pibake check CONFIG [HOST]: one line per check; exit 1 when one failed (warnings allowed). */
export async function checkCommand(configPath: string, hostArg: string | undefined, opts: CheckOptions): Promise<void> {
  const out = createOutput();
  const ports = {
    tls: portOption(opts.portTls, "--port-tls"),
    lan: portOption(opts.portLan, "--port-lan"),
    ws: portOption(opts.portWs, "--port-ws"),
    nodeRed: portOption(opts.portNodeRed, "--port-node-red"),
  };
  const timeoutMs = timeoutOption(opts.timeout);
  const dnsServer = dnsServerOption(opts.dnsServer);
  const stateOption = last(opts.state);
  const sshPort = portOption(opts.portSsh, "--port-ssh");
  const sshKey = last(opts.sshKey);
  if ((sshPort !== undefined || sshKey !== undefined) && !opts.ssh) throw new PibakeError("--port-ssh and --ssh-key go with --ssh", 2);
  if (ports.lan !== undefined && !opts.lan) throw new PibakeError("--port-lan goes with --lan: the LAN listener is checked only from the home network", 2);

  const { model, state } = openConfig(configPath, out, stateOption);
  if (!state.has("ca.crt")) throw new PibakeError(`no CA in ${state.dir}: pass --state with the state directory the image was built with`, 2);

  const caFile = last(opts.caFile);
  if (caFile !== undefined && !model.tls.acme)
    throw new PibakeError('--ca-file goes with tls.mode "acme": in "own-ca" mode the state directory\'s CA is the one trusted', 2);
  const extraCa = caFile === undefined ? undefined : readCaFile(caFile);

  // HOST wins; without it, --lan checks the static address and otherwise the domain.
  const host = hostArg ?? (opts.lan ? model.network.address : model.tls.domain);
  const configArg = configArgument(model);
  const results = await runChecks({
    model,
    state,
    host,
    lan: opts.lan === true,
    ports: {
      tls: ports.tls ?? model.mqtt.tlsPort,
      lan: ports.lan ?? model.mqtt.lanPort,
      ws: ports.ws ?? websocketsPort(model),
      nodeRed: model.nodeRed ? (ports.nodeRed ?? model.nodeRed.port) : undefined,
    },
    ssh: opts.ssh ? { port: sshPort ?? 22, identity: sshKey === undefined ? undefined : path.resolve(sshKey) } : undefined,
    timeoutMs,
    dnsServer,
    ...(extraCa ? { extraCa } : {}),
    buildCommand: `pibake build ${configArg}`,
    pushCommand: `pibake push ${configArg} ${host}`,
  });
  const failedCount = results.filter((r) => r.status === "failed").length;
  const warningCount = results.filter((r) => r.status === "warning").length;
  if (opts.json) {
    process.stdout.write(
      redact(JSON.stringify({ host, lan: opts.lan === true, ok: failedCount === 0, failed: failedCount, warnings: warningCount, checks: results }, null, 2)) +
        "\n",
    );
  } else {
    out.info(`checking ${host}${opts.lan ? " (the static address)" : ""} as clients see it`);
    const width = Math.max(...results.map((r) => r.name.length));
    for (const r of results) {
      out.info(`${LABEL[r.status]}  ${r.name.padEnd(width)}  ${r.detail}`);
      if (r.fix) out.info(`${" ".repeat(9 + width + 2)}→ ${r.fix}`);
    }
    out.info(
      failedCount
        ? `${failedCount} failed, ${warningCount} warning${warningCount === 1 ? "" : "s"}`
        : `all passed${warningCount ? ` (${warningCount} warning${warningCount === 1 ? "" : "s"})` : ""}`,
    );
  }
  if (failedCount) process.exitCode = 1;
}
