import path from "node:path";
import { PibakeError } from "../errors.js";
import { summarize } from "../secrets/pki.js";
import { openConfig, prepareAndRender } from "../pipeline.js";
import { writeRendered } from "../render/write.js";
import { nodeRedSummary } from "../render/node-red.js";
import { createOutput } from "../ui/output.js";
import { protectedPaths, refuseProtectedOutput } from "../protected-paths.js";
import { describeDate } from "./config.js";

export interface RenderOptions {
  out?: string;
  state?: string | string[];
  force?: boolean;
}

/** pibake render CONFIG --out DIR: the stage, the overlay, pi-gen's config and the CA certificate. */
export async function renderCommand(configPath: string, opts: RenderOptions): Promise<void> {
  const out = createOutput();
  if (!opts.out) throw new PibakeError("render needs --out DIR: where to write the stage and overlay", 2);
  const { model, state } = openConfig(configPath, out, opts.state);
  refuseProtectedOutput(opts.out, "--out", protectedPaths(model, state.dir));
  state.ensure();
  const { secrets, rendered } = await prepareAndRender(model, state, { onVersions: (m) => out.info(`Node-RED:    ${m}`) });
  writeRendered(opts.out, rendered, { force: opts.force === true });
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
}
