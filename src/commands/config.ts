import type { CAC } from "cac";
import { closeSync, openSync, readSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { loadConfig, type LoadedConfig } from "../config/load.js";
import { configJsonSchema } from "../config/schema.js";
import { PibakeError } from "../errors.js";
import { summarize } from "../secrets/pki.js";
import { prepareSecrets, StateDir } from "../secrets/index.js";
import { render } from "../render/index.js";
import { writeRendered } from "../render/write.js";
import { nodeRedSummary } from "../render/node-red.js";
import { createOutput, type Output } from "../ui/output.js";
import { protectedPaths, protectedStateDir, refuseProtectedOutput, secretsOf, type ProtectedPath } from "../protected-paths.js";

interface StateOption {
  state?: string;
}

/** Load a config and say its warnings; shared by every command that reads one. */
export function loadAndWarn(configPath: string, out: Output): LoadedConfig {
  const loaded = loadConfig(configPath);
  for (const w of loaded.warnings) out.warn(w);
  return loaded;
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
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err instanceof PibakeError ? err : new PibakeError(`cannot read ${file}: ${(err as Error).message}`, 2);
  }
  if (!head.startsWith("-----BEGIN CERTIFICATE-----") && !force) {
    throw new PibakeError(`--out ${file} exists and is not a certificate: choose another file, or pass --force to replace it`, 2);
  }
}

function describeDate(d: Date): string {
  const days = Math.round((d.getTime() - Date.now()) / 86_400_000);
  return `${d.toISOString().slice(0, 10)} (${days} days)`;
}

export function registerConfigCommands(cli: CAC): void {
  cli
    .command("render <config>", "Render the pi-gen stage, overlay, pi-gen config and CA certificate into a directory")
    .option("--out <dir>", "Output directory (must be empty or absent unless --force)")
    .option("--state <dir>", "State directory with the CA and certificates (default: <config dir>/.pibake/<image name>)")
    .option("--force", "Replace a non-empty output directory")
    .example("pibake render examples/broker.json --out render/")
    .action(async (configPath: string, opts: StateOption & { out?: string; force?: boolean }) => {
      const out = createOutput();
      if (!opts.out) throw new PibakeError("render needs --out DIR: where to write the stage and overlay", 2);
      const { model } = loadAndWarn(configPath, out);
      const state = StateDir.locate(model.configDir, model.image.name, opts.state);
      refuseProtectedOutput(opts.out, "--out", protectedPaths(model, state.dir));
      const secrets = prepareSecrets(model, state);
      const rendered = await render(model, secrets);
      writeRendered(opts.out, rendered, { force: opts.force });
      const cert = summarize(secrets.pki.serverCertPem);
      out.info(`rendered ${path.resolve(opts.out)}`);
      out.info(`  stage/          pi-gen stage (${rendered.stage.length} files)`);
      out.info(`  overlay.tar     ${rendered.overlay.length} files for the Pi`);
      out.info(`  pi-gen.config   for pi-gen's build.sh -c`);
      out.info(`  ca.crt          install on clients to trust the broker`);
      out.info(`domain:      ${model.tls.domain}`);
      out.info(`certificate: ${secrets.pki.serverCertStatus}, valid until ${describeDate(cert.notAfter)}`);
      out.info(`CA:          ${secrets.pki.caCreated ? "created" : "reused"} in ${state.dir}`);
      for (const line of nodeRedSummary(model, secrets)) out.info(line);
    });

  cli
    .command("validate <config>", "Check a config without writing anything")
    .action((configPath: string) => {
      const out = createOutput();
      const { model } = loadAndWarn(configPath, out);
      out.info(`${path.resolve(configPath)} is valid: image ${model.image.name} (${model.image.release}, ${model.image.arch}), domain ${model.tls.domain}`);
      // File references may point anywhere the user can read: say where each secret came from.
      for (const [where, secret] of secretsOf(model)) {
        out.info(`  ${where}: ${secret.sourceFile ? `from file ${secret.sourceFile}` : secret.origin === "literal" ? "written in the config" : `from ${secret.origin.replace(/^env /, "environment variable ")}`}`);
      }
    });

  cli.command("schema", "Print the JSON Schema of the config file").action(() => {
    process.stdout.write(JSON.stringify(configJsonSchema(), null, 2) + "\n");
  });

  cli
    .command("ca <action> [config]", "CA certificate: `ca export` writes it for clients, `ca show` describes the CA and server certificate")
    .option("--state <dir>", "State directory (default: from the config: <config dir>/.pibake/<image name>)")
    .option("--out <file>", "With export: write to this file instead of standard output (an existing certificate is replaced)")
    .option("--force", "With export --out: replace an existing file that is not a certificate")
    .example("pibake ca export examples/broker.json --out ca.crt")
    .example("pibake ca show --state examples/.pibake/mqtt-broker")
    .action((action: string, configPath: string | undefined, opts: StateOption & { out?: string; force?: boolean }) => {
      const out = createOutput();
      let state: StateDir;
      let protect: ProtectedPath[];
      if (configPath) {
        const { model } = loadAndWarn(configPath, out);
        state = StateDir.locate(model.configDir, model.image.name, opts.state);
        protect = protectedPaths(model, state.dir);
      } else if (opts.state) {
        state = new StateDir(path.resolve(opts.state));
        protect = [protectedStateDir(state.dir)];
      } else throw new PibakeError(`ca ${action} needs a config file or --state DIR`, 2);
      const caPem = state.read("ca.crt");
      if (!caPem) throw new PibakeError(`no CA in ${state.dir}: run pibake render or pibake build first`);
      if (action === "export") {
        if (opts.out) {
          refuseProtectedOutput(opts.out, "--out", protect);
          refuseNonCertificate(opts.out, opts.force === true);
          const tmp = `${opts.out}.tmp-${process.pid}`;
          try {
            writeFileSync(tmp, caPem, { mode: 0o644 });
            renameSync(tmp, opts.out);
          } catch (err) {
            rmSync(tmp, { force: true });
            throw new PibakeError(`cannot write ${opts.out}: ${(err as Error).message}`);
          }
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
    });
}
