import { isIP } from "node:net";
import { configDigest } from "../config/digest.js";
import type { Model } from "../config/model.js";
import { summarize } from "../secrets/pki.js";
import type { StateDir } from "../secrets/state.js";
import { checkDns, makeResolver, resolveAll } from "./dns.js";
import { checkMqtt, type MqttTarget } from "./mqtt.js";
import { describe } from "./net.js";
import { checkNodeRed } from "./node-red.js";
import { checkSsh, type SshCheckTarget } from "./ssh.js";
import { Budget, failed, warning, type CheckResult } from "./result.js";
import { NODE_RED_INSTALL } from "./facts.js";
import { checkTls, publicTrust, type TlsTarget } from "./tls.js";

export type { CheckResult, CheckStatus } from "./result.js";

/** Every network wait of one run together stays under this, whatever --timeout says. */
export const TOTAL_BOUND_MS = 25_000;

export interface CheckPlan {
  model: Model;
  state: StateDir;
  /** Where to connect: tls.domain, the static address with --lan, or the user's HOST. */
  host: string;
  lan: boolean;
  ports: { tls: number; lan: number; ws: number | undefined; nodeRed: number | undefined };
  /** Check SSH logins of the first user (--ssh), with this private key or ssh's own choice. */
  ssh: { port: number; identity: string | undefined } | undefined;
  timeoutMs: number;
  dnsServer: string | undefined;
  /** --ca-file: one more root to trust in tls.mode "acme" (a test CA, a staging root). */
  extraCa?: { pem: string; file: string };
  /** "pibake build CONFIG" and "pibake push CONFIG HOST", as the user would type them, for fixes. */
  buildCommand: string;
  pushCommand: string;
}

/** The port of the WebSockets-over-TLS listener, when the config has one. */
export function websocketsPort(model: Model): number | undefined {
  return model.mqtt.websockets?.tlsPort;
}

/**
 * Check a running broker the way its clients see it. The families (TLS and
 * MQTT on the TLS port, WebSockets, the LAN port, DNS, Node-RED) run side by
 * side; their lines come out in this fixed order.
 */
export async function runChecks(plan: CheckPlan): Promise<CheckResult[]> {
  const { model, state } = plan;
  const budget = new Budget(plan.timeoutMs, TOTAL_BOUND_MS);
  const caPem = state.read("ca.crt")!;
  const issued = state.read("server.crt");
  const dnsFamily = plan.lan ? Promise.resolve([]) : checkDns(model.tls.domain, model.ddns, plan.dnsServer, budget);

  // With --dns-server the host's address comes from that server too, as it would for a client using it.
  let address = plan.host;
  if (plan.dnsServer && !isIP(plan.host)) {
    try {
      address = (await resolveAll(makeResolver(budget.ms, plan.dnsServer), plan.host, budget.ms)).find((a) => isIP(a) === 4) ?? address;
    } catch (err) {
      return [
        ...(await dnsFamily),
        failed(
          "host",
          `${plan.host} does not resolve (asked ${plan.dnsServer}): ${describe(err)}; nothing else was tried`,
          "give the Pi's address as HOST, or check from home with --lan",
        ),
      ];
    }
  }

  const tlsTarget = tlsTargetOf(plan, address, caPem, issued);
  // With ACME, MQTT clients trust the public roots; the own CA's too, for the minutes before the public certificate arrives (the TLS lines tell which one is served).
  const tlsTransport = { ca: model.tls.acme ? [...publicTrust(plan.extraCa?.pem), caPem] : caPem, servername: model.tls.domain, rejectUnauthorized: true };
  const mqttTarget = (label: string, port: number, transport: MqttTarget["transport"]): MqttTarget => ({
    label,
    host: plan.host,
    address,
    port,
    transport,
    users: model.mqtt.users,
    buildCommand: plan.buildCommand,
    lan: plan.lan,
  });

  const tlsFamily = checkTlsThenMqtts(plan, tlsTarget, mqttTarget("mqtts", plan.ports.tls, { protocol: "mqtts", ...tlsTransport }), budget);
  const wsPort = plan.ports.ws;
  const wsFamily =
    wsPort === undefined
      ? Promise.resolve([])
      : checkMqtt(
          mqttTarget("wss", wsPort, { protocol: "wss", ...tlsTransport, wsOptions: { servername: model.tls.domain } } as MqttTarget["transport"]),
          budget,
        );
  const lanFamily = plan.lan ? checkMqtt(mqttTarget("lan", plan.ports.lan, { protocol: "mqtt" }), budget) : Promise.resolve([]);
  const nodeRedFamily =
    plan.ports.nodeRed === undefined ? Promise.resolve([]) : checkNodeRed(plan.host, address, plan.ports.nodeRed, plan.lan, plan.buildCommand, budget);
  const sshFamily = plan.ssh ? checkSsh(sshTargetOf(plan, plan.ssh, address), budget) : Promise.resolve([]);

  const families = await Promise.all([tlsFamily, wsFamily, lanFamily, dnsFamily, nodeRedFamily, sshFamily]);
  return editorWhileInstalling(families.flat());
}

/** The TLS port as a client reaches it, with the CA it trusts and the certificate the last build issued. */
function tlsTargetOf(plan: CheckPlan, address: string, caPem: string, issued: string | undefined): TlsTarget {
  const { model, state } = plan;
  return {
    host: plan.host,
    address,
    port: plan.ports.tls,
    servername: model.tls.domain,
    caPem,
    caFile: state.file("ca.crt"),
    issuedFingerprint256: issued ? summarize(issued).fingerprint256 : undefined,
    stateDir: state.dir,
    buildCommand: plan.buildCommand,
    lan: plan.lan,
    ...(model.tls.acme
      ? { acme: { server: model.tls.acme.server, ...(plan.extraCa ? { extraCaPem: plan.extraCa.pem, extraCaFile: plan.extraCa.file } : {}) } }
      : {}),
  };
}

/** TLS first; MQTT over it only when the server was reached and a client would trust it. */
async function checkTlsThenMqtts(plan: CheckPlan, tlsTarget: TlsTarget, mqtts: MqttTarget, budget: Budget): Promise<CheckResult[]> {
  const t = await checkTls(tlsTarget, budget);
  if (!t.reachable) return t.results;
  if (!t.trusted)
    return [
      ...t.results,
      failed(
        "mqtts",
        `not tried: clients that trust only ${plan.model.tls.acme ? "the public roots" : "this CA"} and verify the name refuse this server`,
        "fix the TLS lines above first",
      ),
    ];
  return [...t.results, ...(await checkMqtt(mqtts, budget))];
}

/** The Pi over SSH (--ssh): the user and keys the config gives, and what its facts are judged against. */
function sshTargetOf(plan: CheckPlan, ssh: NonNullable<CheckPlan["ssh"]>, address: string): SshCheckTarget {
  const { model } = plan;
  return {
    host: plan.host,
    address,
    port: ssh.port,
    user: model.user.name,
    keys: model.user.sshKeys,
    passwordSsh: model.user.passwordSsh,
    identity: ssh.identity,
    buildCommand: plan.buildCommand,
    ddnsHostname: model.ddns?.hostname,
    configDigest: configDigest(model),
    pushCommand: plan.pushCommand,
    acme: model.tls.acme !== undefined,
    nodeRed: model.nodeRed !== undefined,
  };
}

/**
 * An editor that does not answer while the Pi says its first boot is still installing Node-RED is
 * what a fresh card shows for its first minutes: a warning that says so, not a failure.
 */
export function editorWhileInstalling(results: CheckResult[]): CheckResult[] {
  const install = results.find((r) => r.name === NODE_RED_INSTALL);
  if (install?.status !== "warning") return results;
  return results.map((r) =>
    r.name === "node-red" && r.status === "failed" ? warning("node-red", `${r.detail}: the first boot is still installing it`, install.fix) : r,
  );
}
