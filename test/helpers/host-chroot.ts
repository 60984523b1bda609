import { execa } from "execa";
import { chmodSync, copyFileSync, mkdirSync } from "node:fs";
import path from "node:path";

/**
 * A small root file system made of this host's own bash, tar and env with
 * their libraries: enough for a stage's NN-run.sh to do its work inside a
 * real chroot (through on_chroot), with no arm64 emulation.
 */
export async function hostChroot(dir: string): Promise<void> {
  const programs = ["/bin/bash", "/usr/bin/tar", "/usr/bin/env"];
  const files = new Set(programs);
  for (const p of programs) {
    const ldd = await execa("ldd", [p]);
    for (const m of ldd.stdout.matchAll(/(\/\S+)/g)) files.add(m[1]!);
  }
  for (const f of files) {
    mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    copyFileSync(f, path.join(dir, f));
    chmodSync(path.join(dir, f), 0o755);
  }
}
