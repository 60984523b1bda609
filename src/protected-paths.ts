import { existsSync, realpathSync } from "node:fs";
import path from "node:path";
import type { Model, Secret } from "./config/model.js";
import { PibakeError } from "./errors.js";

/**
 * What no command may replace or delete, whatever its flags: the config, the
 * files it refers to (secrets, base stages), the state directory with the CA
 * key, and a build's base image. Every output path is checked against them
 * before anything is written.
 */
export interface ProtectedPath {
  path: string;
  /** For messages: "the config", "the state directory (the CA key)". */
  what: string;
}

/** The state directory as a protected path: the one protection a command without a config still has. */
export function protectedStateDir(dir: string): ProtectedPath {
  return { path: dir, what: "the state directory (it holds the CA key)" };
}

export function protectedPaths(model: Model, stateDir: string, extra: ProtectedPath[] = []): ProtectedPath[] {
  const secretFiles = secretsOf(model).flatMap(([where, s]) => (s.sourceFile ? [{ path: s.sourceFile, what: `the secret file of ${where}` }] : []));
  return [
    { path: model.configPath, what: "the config" },
    protectedStateDir(stateDir),
    ...secretFiles,
    ...model.image.baseStages.map((d) => ({ path: d, what: "a base stage of image.baseStages" })),
    ...extra,
  ];
}

/** Every secret of the model with its JSON path and, when it came from a file, that file. */
export function secretsOf(model: Model): [string, Secret][] {
  const list: [string, Secret | undefined][] = [
    ["user.password", model.user.password],
    ["network.wifi.passphrase", model.network.wifi?.passphrase],
    ...model.mqtt.users.map((u, i): [string, Secret] => [`mqtt.users[${i}].password`, u.password]),
    [
      model.ddns?.provider === "dyndns2" ? "ddns.password" : "ddns.token",
      model.ddns ? (model.ddns.provider === "dyndns2" ? model.ddns.password : model.ddns.token) : undefined,
    ],
    ["nodeRed.admin.password", model.nodeRed?.admin.password],
  ];
  return list.flatMap(([where, s]): [string, Secret][] => (s ? [[where, s]] : []));
}

/**
 * Refuses (exit 2) an output path that is, contains or lies inside a protected
 * path. Symbolic links are followed, so a link cannot smuggle one past the check.
 */
export function refuseProtectedOutput(output: string, option: string, protect: ProtectedPath[]): void {
  const out = canonical(output);
  for (const p of protect) {
    const target = canonical(p.path);
    let relation: string | undefined;
    if (out === target) relation = "is";
    else if (isInside(target, out)) relation = "contains";
    else if (isInside(out, target)) relation = "lies inside";
    if (relation) {
      throw new PibakeError(
        `${option} ${output} ${relation} ${p.what}, ${target}: pibake never replaces or deletes it; choose an output path outside it, such as a new directory`,
        2,
      );
    }
  }
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}

/** The absolute path with every link in its existing part resolved. */
function canonical(p: string): string {
  let existing = path.resolve(p);
  const rest: string[] = [];
  while (!existsSync(existing)) {
    const parent = path.dirname(existing);
    if (parent === existing) break;
    rest.unshift(path.basename(existing));
    existing = parent;
  }
  try {
    existing = realpathSync(existing);
  } catch {
    // Unreadable: compare the path as given.
  }
  return path.join(existing, ...rest);
}
