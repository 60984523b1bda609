import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import type { Requirement } from "./types.js";

/**
 * Whether this host can run the image's ARM programs (apt's maintainer
 * scripts, usermod, systemctl, pi-gen's stages): natively, or through
 * qemu-user registered with binfmt_misc. Shared by both engines.
 */

/** ELF header prefixes that binfmt_misc entries for each image architecture match. */
const ELF_MAGIC: Record<string, { magic: string; name: string; qemu: string }> = {
  arm64: { magic: "7f454c460201010000000000000000000200b700", name: "qemu-aarch64", qemu: "aarch64" },
  armhf: { magic: "7f454c4601010100000000000000000002002800", name: "qemu-arm", qemu: "arm" },
};

/** Whether this host runs the image's programs without emulation. */
export function runsNatively(imageArch: string, hostArch: string = process.arch): boolean {
  if (hostArch === "arm64") return imageArch === "arm64" || imageArch === "armhf";
  if (hostArch === "arm") return imageArch === "armhf";
  return false;
}

export interface BinfmtEntry {
  name: string;
  enabled: boolean;
  interpreter: string;
  flags: string;
  magic: string;
}

export function parseBinfmtEntry(name: string, text: string): BinfmtEntry {
  const field = (k: string) => new RegExp(`^${k} (.*)$`, "m").exec(text)?.[1]?.trim() ?? "";
  return { name, enabled: /^enabled$/m.test(text), interpreter: field("interpreter"), flags: field("flags:").replace(/^:/, ""), magic: field("magic") };
}

function readEntries(dir: string): BinfmtEntry[] {
  return readdirSync(dir)
    .filter((n) => n !== "status" && n !== "register")
    .flatMap((n) => {
      try {
        return [parseBinfmtEntry(n, readFileSync(path.join(dir, n), "utf8"))];
      } catch {
        return [];
      }
    });
}

/**
 * On a host that is not ARM, the image's programs (apt's maintainer scripts,
 * usermod, systemctl) run through qemu-user, which binfmt_misc must hand them
 * to, with the F flag so that it works inside a chroot. Returns what is wrong
 * and the exact commands that fix it, or undefined when all is well.
 */
export function binfmtProblem(imageArch: string, dir = "/proc/sys/fs/binfmt_misc", hostArch: string = process.arch): string | undefined {
  if (runsNatively(imageArch, hostArch)) return undefined;
  const want = ELF_MAGIC[imageArch];
  if (!want) return `pibake cannot run ${imageArch} programs on this ${hostArch} host`;
  const host = hostArch === "x64" ? "x86_64" : hostArch;
  const intro = `this ${host} host cannot run the image's ${imageArch} programs (package scripts, usermod, systemctl): they need qemu-user through binfmt_misc`;
  const install = `sudo apt-get install qemu-user-static binfmt-support   # Debian 12, Ubuntu; on Debian 13: sudo apt-get install qemu-user-binfmt`;
  if (!existsSync(path.join(dir, "status"))) {
    return `${intro}, and binfmt_misc is not mounted. Fix:\n  sudo mount -t binfmt_misc binfmt_misc ${dir}\n  ${install}\n  sudo update-binfmts --enable ${want.name}\n(in a container, run them on the host: binfmt_misc is shared with it)`;
  }
  if (readFileSync(path.join(dir, "status"), "utf8").trim() !== "enabled") {
    return `${intro}, and binfmt_misc is disabled. Fix:\n  echo 1 | sudo tee ${dir}/status`;
  }
  const entry = readEntries(dir).find((e) => e.magic.startsWith(want.magic.slice(0, 36)));
  if (!entry) {
    return `${intro}, and binfmt_misc has no entry for ${imageArch} ELF programs. Fix:\n  ${install}\n  sudo update-binfmts --enable ${want.name}`;
  }
  if (!entry.enabled) {
    return `${intro}; binfmt_misc has ${entry.name} but it is disabled. Fix:\n  sudo update-binfmts --enable ${entry.name}   # or: echo 1 | sudo tee ${dir}/${entry.name}`;
  }
  if (!entry.flags.includes("F")) {
    return `${intro}; binfmt_misc's ${entry.name} lacks the F (fix binary) flag, so its interpreter ${entry.interpreter} cannot be found inside a chroot. Fix:\n  ${install}\n(the static qemu's registration has the F flag; then check: grep flags ${dir}/${entry.name})`;
  }
  if (entry.interpreter && !existsSync(entry.interpreter)) {
    return `${intro}; binfmt_misc's ${entry.name} names ${entry.interpreter}, which does not exist. Fix:\n  sudo apt-get install --reinstall qemu-user-static   # or qemu-user-binfmt on Debian 13`;
  }
  return undefined;
}

/** binfmtProblem as a requirement: what is needed on this host, and whether it is there. */
export function binfmtRequirement(imageArch: string, dir = "/proc/sys/fs/binfmt_misc", hostArch: string = process.arch): Requirement {
  const host = hostArch === "x64" ? "x86_64" : hostArch;
  const want = ELF_MAGIC[imageArch];
  const native = runsNatively(imageArch, hostArch);
  const need = native || !want ? `${imageArch} programs` : `${want.name} in binfmt_misc`;
  const problem = binfmtProblem(imageArch, dir, hostArch);
  if (problem) return { need, problem: { what: problem } };
  return { need, met: native ? `run natively on this ${host} host` : `registered: the image's ${imageArch} programs run on this ${host} host` };
}
