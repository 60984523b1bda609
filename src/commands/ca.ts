import { closeSync, openSync, readSync, statSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../errors.js";
import { writeFileAtomicSync } from "../host/files.js";
import { giveTo } from "../host/sudo.js";
import { summarize } from "../secrets/pki.js";
import { StateDir } from "../secrets/state.js";
import { createOutput } from "../ui/output.js";
import { protectedPaths, protectedStateDir, refuseProtectedOutput, type ProtectedPath } from "../protected-paths.js";
import { describeDate } from "./config.js";
import { last } from "./options.js";
import { openConfig } from "../pipeline.js";

export interface CaOptions {
  state?: string | string[];
  out?: string;
  force?: boolean;
}

/** `ca export --out` replaces an older certificate freely, anything else only with --force. */
function refuseNonCertificate(file: string, force: boolean): void {
  let head: string;
  try {
    const st = statSync(file);
    if (st.isDirectory()) throw new PibakeError(`--out ${file} is a directory: give a file name such as ${path.join(file, "ca.crt")}`, 2);
    const fd = openSync(file, "r");
    try {
      const buf = Buffer.alloc(64);
      head = buf.subarray(0, readSync(fd, buf, 0, 64, 0)).toString("latin1");
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      const dir = path.dirname(path.resolve(file));
      if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new PibakeError(`--out ${file}: directory ${dir} does not exist`, 2);
      return;
    }
    throw err instanceof PibakeError ? err : new PibakeError(`cannot read ${file}: ${(err as Error).message}`, 2);
  }
  if (!head.startsWith("-----BEGIN CERTIFICATE-----") && !force) {
    throw new PibakeError(`--out ${file} exists and is not a certificate: choose another file, or pass --force to replace it`, 2);
  }
}

/** pibake ca export|show [CONFIG] [--state DIR]. */
export function caCommand(action: string, configPath: string | undefined, opts: CaOptions): void {
  const out = createOutput();
  let state: StateDir;
  let protect: ProtectedPath[];
  if (configPath) {
    const opened = openConfig(configPath, out, opts.state);
    state = opened.state;
    protect = protectedPaths(opened.model, state.dir);
  } else if (last(opts.state) !== undefined) {
    state = new StateDir(path.resolve(last(opts.state)!));
    protect = [protectedStateDir(state.dir)];
  } else throw new PibakeError(`ca ${action} needs a config file or --state DIR`, 2);
  const caPem = state.read("ca.crt");
  if (!caPem) throw new PibakeError(`no CA in ${state.dir}: run pibake render or pibake build first`);
  if (action === "export") {
    if (opts.out) {
      refuseProtectedOutput(opts.out, "--out", protect);
      refuseNonCertificate(opts.out, opts.force === true);
      writeFileAtomicSync(opts.out, caPem, 0o644);
      giveTo(opts.out);
      out.info(`wrote ${opts.out}`);
    } else process.stdout.write(caPem);
  } else if (action === "show") {
    const show = (label: string, pem: string | undefined) => {
      if (!pem) return out.info(`${label}: none yet`);
      const s = summarize(pem);
      out.info(`${label}:`);
      out.info(`  subject:     ${s.subject}`);
      out.info(`  issuer:      ${s.issuer}`);
      out.info(`  SHA-256:     ${s.fingerprint256}`);
      out.info(`  valid until: ${describeDate(s.notAfter)}`);
      if (s.dnsNames.length || s.ipAddresses.length) out.info(`  names:       ${[...s.dnsNames, ...s.ipAddresses].join(", ")}`);
    };
    show("CA", caPem);
    show("server certificate", state.read("server.crt"));
    const loose = state.looseFiles(["ca.key", "server.key"]);
    if (loose.length) out.warn(`${loose.join(", ")} in ${state.dir} can be read by other users: chmod 600 them`);
  } else throw new PibakeError(`unknown ca action "${action}": use "export" or "show"`, 2);
}
