import { chmodSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { PibakeError } from "../errors.js";
import { giveTree, mkdirOwned } from "../host/sudo.js";
import type { Rendered } from "./index.js";

/**
 * Write a render to DIR: stage/, overlay.tar, pi-gen.config, ca.crt, manifest.json.
 * Everything goes to a temporary sibling first and is renamed into place, so
 * that a failure or Ctrl-C never leaves a half-written DIR. DIR holds secrets
 * (the server key, the ddclient token), so it is 0700. Under sudo it, and the
 * parents made for it, are the invoking user's.
 */
export function writeRendered(outDir: string, rendered: Rendered, opts: { force?: boolean } = {}): void {
  const target = path.resolve(outDir);
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new PibakeError(`${target} exists and is not a directory`);
    if (readdirSync(target).length > 0 && !opts.force) {
      throw new PibakeError(`${target} is not empty: choose another --out, or pass --force to replace it`);
    }
  }
  mkdirOwned(path.dirname(target));
  const tmp = `${target}.tmp-${randomBytes(4).toString("hex")}`;
  try {
    mkdirSync(tmp, { mode: 0o700 });
    const put = (rel: string, content: Buffer | string, mode: number) => {
      const file = path.join(tmp, rel);
      mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
      writeFileSync(file, content, { mode });
      chmodSync(file, mode);
    };
    for (const f of rendered.stage) put(path.join("stage", f.path), f.content, f.mode);
    put("overlay.tar", rendered.overlayTar, 0o600);
    put("pi-gen.config", rendered.piGenConfig, 0o600);
    put("ca.crt", rendered.caCertPem, 0o644);
    put("manifest.json", JSON.stringify(rendered.manifest, null, 2) + "\n", 0o644);
    giveTree(tmp);
    if (existsSync(target)) {
      const old = `${target}.old-${randomBytes(4).toString("hex")}`;
      renameSync(target, old);
      renameSync(tmp, target);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(tmp, target);
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    if (err instanceof PibakeError) throw err;
    throw new PibakeError(`cannot write ${target}: ${(err as Error).message}`);
  }
}
