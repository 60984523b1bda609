import path from "node:path";
import type { Model } from "../config/model.js";
import { PibakeError } from "../errors.js";
import { stagePackages } from "../render/stage.js";
import type { Rendered } from "../render/index.js";
import { prepareAndRender } from "../pipeline.js";
import { configDigests } from "../secrets/digests.js";
import type { StateDir } from "../secrets/index.js";
import { summarize, type CertSummary } from "../secrets/pki.js";
import { runCommand } from "../host/process.js";
import { redact } from "../host/redact.js";
import type { Output } from "../ui/output.js";
import { PIBAKE_VERSION } from "../version.js";
import { asInvoker } from "../host/sudo.js";
import { applyCommand, inspectCommand, packPayload, pushSsh, type PushTarget } from "./commands.js";
import { describeChange, parseInspect, planPush, type PiState, type PushPlan } from "./plan.js";

export interface PushSettings {
  model: Model;
  state: StateDir;
  host: string;
  port: number;
  key: string;
  knownHosts: string;
  allowNetworkChange: boolean;
  /** Show what would change and stop: nothing is changed on the Pi. */
  dryRun?: boolean;
  /** Asked before anything changes on the Pi; false stops the push. */
  confirm: (plan: PushPlan) => Promise<boolean>;
  out: Output;
  buildCommand: string;
}

/** How long each remote step may take, all bounded. */
export const LIMITS = {
  connectSeconds: 15,
  inspectMs: 90_000,
  /** Unpacking, restarting the services, the health wait and a roll-back with its own health wait. */
  applyMs: 240_000,
  healthSeconds: 45,
};

/** The apply script's exit code when it put the previous files back. */
const ROLLED_BACK = 3;
/** The apply script's exit when a target's path runs through a link another user owns: nothing was changed. */
const REFUSED_LINK = 4;

export interface PushResult {
  plan: PushPlan;
  applied: boolean;
  ms: number;
}

async function ssh(target: PushTarget, remote: string, input: Buffer, ms: number, what: string) {
  // Under sudo, as the user who ran it: their key, and known_hosts in their state directory stays theirs.
  const user = asInvoker();
  const r = await runCommand(pushSsh(target, remote, what), { input, timeout: ms, ...(user ? { as: user, env: user.env } : {}) });
  if (r.timedOut) throw new PibakeError(`${what}: no end within ${ms / 1000} s (ssh ${target.user}@${target.host} port ${target.port})`);
  // ssh's own failure (exit 255): cannot connect, host key changed, key refused.
  if (r.exitCode === 255)
    throw new PibakeError(`${what}: ssh ${target.user}@${target.host} port ${target.port} failed: ${redact(r.stderr.trim()) || "no message"}`);
  return r;
}

/** Sudo's refusal of the password, in its own words. */
function sudoRefused(stderr: string): boolean {
  return /incorrect password|Sorry, try again|no password was provided|a password is required|is not in the sudoers/i.test(stderr);
}

/**
 * One push: what the config renders, the Pi it goes to and what it runs
 * there. The steps run in order, each a function of this record.
 */
interface Push {
  readonly s: PushSettings;
  readonly rendered: Rendered;
  readonly cert: CertSummary;
  readonly target: PushTarget;
  /** user.password for sudo on the Pi, a line of stdin before anything else. */
  readonly password: Buffer;
  pi?: PiState;
  plan?: PushPlan;
}

export async function runPush(s: PushSettings): Promise<PushResult> {
  const { out } = s;
  const started = Date.now();
  const p = await renderForPush(s);
  await inspectPi(p);
  const plan = planOrRefuse(p);
  if (plan.changes.length === 0) {
    out.info(`nothing to push: the ${plan.unchanged.length} files on ${s.host} are those the config renders`);
    return { plan, applied: false, ms: Date.now() - started };
  }
  describePlan(p);
  if (s.dryRun) {
    out.info(`dry run: nothing was changed on ${s.host}`);
    return { plan, applied: false, ms: Date.now() - started };
  }
  if (!(await s.confirm(plan))) throw new PibakeError("cancelled: nothing was changed on the Pi");
  await applyPush(p);
  const ms = Date.now() - started;
  out.info(
    `pushed to ${s.host} in ${(ms / 1000).toFixed(1)} s: certificate ${p.cert.fingerprint256} for ${p.cert.dnsNames.join(", ")}; recorded in /var/lib/pibake/push.json`,
  );
  return { plan, applied: true, ms };
}

/** The files the config renders, with the image's own CA: a new one would make every client distrust the broker. */
async function renderForPush(s: PushSettings): Promise<Push> {
  const { model, state, out } = s;
  if (!state.has("ca.crt"))
    throw new PibakeError(
      `no CA in ${state.dir}: pass --state with the state directory the image was built with (a new CA would make every client distrust the broker)`,
      2,
    );
  const { secrets, rendered } = await prepareAndRender(model, state, { onVersions: (m) => out.info(`Node-RED: ${m}`) });
  return {
    s,
    rendered,
    cert: summarize(secrets.pki.serverCertPem),
    target: { host: s.host, port: s.port, user: model.user.name, key: s.key, knownHosts: s.knownHosts, connectTimeoutSeconds: LIMITS.connectSeconds },
    password: Buffer.from(`${model.user.password.reveal()}\n`),
  };
}

/** What the Pi has at the overlay's paths, and what it was built and last pushed with. */
async function inspectPi(p: Push): Promise<void> {
  const { s } = p;
  const { model } = s;
  s.out.info(`asking ${model.user.name}@${s.host} (port ${s.port}) what it runs`);
  const inspected = await ssh(p.target, inspectCommand(p.rendered.overlay.map((f) => f.path)), p.password, LIMITS.inspectMs, "reading the Pi's files");
  if (inspected.exitCode !== 0) {
    if (sudoRefused(inspected.stderr))
      throw new PibakeError(
        `sudo on ${s.host} refused the password of user.password for ${model.user.name}: the Pi's password differs from the config's (a push does not change it)`,
      );
    throw new PibakeError(`reading the Pi's files failed (exit ${inspected.exitCode}): ${redact(inspected.stderr.trim()).slice(-2000)}`);
  }
  p.pi = parseInspect(inspected.stdout);
}

/** The files to change, and what then restarts; what cannot change in place stops the push here. */
function planOrRefuse(p: Push): PushPlan {
  const { s } = p;
  const { model } = s;
  const plan = planPush({
    overlay: p.rendered.overlay,
    pi: p.pi!,
    release: model.image.release,
    arch: model.image.arch,
    packages: stagePackages(p.rendered),
    allowNetworkChange: s.allowNetworkChange,
  });
  if (plan.refusals.length) {
    throw new PibakeError(
      [
        `cannot push to ${s.host}: this cannot change in place:`,
        ...plan.refusals.map((r) => `  ${r.what}: ${r.reason}`),
        `build a new image instead: ${s.buildCommand}`,
      ].join("\n"),
    );
  }
  p.plan = plan;
  return plan;
}

/** What would change on the Pi, before anything does. */
function describePlan(p: Push): void {
  const { s } = p;
  const { model, out } = s;
  const plan = p.plan!;
  const pi = p.pi!;
  out.info(`on ${s.host}, ${plan.changes.length} file(s) would change (${plan.unchanged.length} unchanged):`);
  for (const c of plan.changes) out.info(`  ${describeChange(c)}`);
  out.info(
    `then: ${plan.actions.join("; ") || "nothing to restart"}; mosquitto must be active and listen on port ${model.mqtt.tlsPort} within ${LIMITS.healthSeconds} s, or the previous files go back`,
  );
  if (pi.push?.domain !== undefined || pi.build?.domain !== undefined) {
    const before = pi.push?.domain ?? pi.build?.domain;
    if (before !== model.tls.domain) out.info(`domain: ${before} → ${model.tls.domain}`);
  }
}

/** The record the Pi keeps of this push (/var/lib/pibake/push.json): which config, domain and certificate. */
function pushRecord(p: Push): Record<string, unknown> {
  const { model, state } = p.s;
  const { digest, secretsHmac } = configDigests(model, state);
  return {
    pibake: PIBAKE_VERSION,
    pushedAt: new Date().toISOString(),
    config: { file: path.basename(model.configPath), digest, secrets: secretsHmac },
    domain: model.tls.domain,
    tlsPort: model.mqtt.tlsPort,
    certificate: { sha256Fingerprint: p.cert.fingerprint256, notAfter: p.cert.notAfter.toISOString(), dnsNames: p.cert.dnsNames },
    overlay: p.rendered.overlay.map((f) => f.path),
  };
}

/** The files and the record onto the Pi, which restarts what they change and rolls back when mosquitto is not healthy after. */
async function applyPush(p: Push): Promise<void> {
  const { s } = p;
  const { model, out } = s;
  const plan = p.plan!;
  const payload = await packPayload({ files: plan.files, removed: plan.removed, actions: plan.actions, record: pushRecord(p) });
  const rollbackPort = p.pi!.push?.tlsPort ?? model.mqtt.tlsPort;
  out.info(`pushing ${plan.files.length} file(s) to ${s.host}`);
  const applied = await ssh(
    p.target,
    applyCommand(model.mqtt.tlsPort, rollbackPort, LIMITS.healthSeconds),
    Buffer.concat([p.password, payload]),
    LIMITS.applyMs,
    "applying the push",
  );
  const said = redact(applied.stderr)
    .split("\n")
    .filter((l) => l.trim() !== "");
  for (const l of said) out.info(`  ${l}`);
  if (applied.exitCode === ROLLED_BACK) {
    throw new PibakeError(
      `the push failed and was rolled back: mosquitto did not come up healthy with the new files, so ${s.host} runs the previous ones again (see the lines above)`,
    );
  }
  if (applied.exitCode === REFUSED_LINK) {
    throw new PibakeError(
      `${s.host} refused the push before changing anything: a path it would write runs through a link that a user other than root owns (see the line above)`,
    );
  }
  if (applied.exitCode !== 0) {
    if (sudoRefused(applied.stderr))
      throw new PibakeError(`sudo on ${s.host} refused the password of user.password for ${model.user.name}: nothing was changed`);
    throw new PibakeError(`applying the push failed (exit ${applied.exitCode}); the Pi may be between the old and new files: check it with pibake check`);
  }
}
