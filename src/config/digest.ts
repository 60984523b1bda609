import { createHash } from "node:crypto";
import { Secret, type Model } from "./model.js";

/** JSON with object keys sorted, so that equal values give equal digests. */
export function canonicalJson(value: unknown, onSecret?: (s: Secret) => void): string {
  const walk = (v: unknown): unknown => {
    if (v instanceof Secret) {
      onSecret?.(v);
      return "***";
    }
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === "object") {
      return Object.fromEntries(
        Object.keys(v)
          .sort()
          .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
          .map((k) => [k, walk((v as Record<string, unknown>)[k])]),
      );
    }
    return v;
  };
  return JSON.stringify(walk(value));
}

/** sha256 of the validated config (every default applied, each secret as "***", without its own path): the same config gives the same digest anywhere. */
export function configDigest(model: Model, onSecret?: (s: Secret) => void): string {
  const { configPath: _p, configDir: _d, ...rest } = model;
  return `sha256:${createHash("sha256").update(canonicalJson(rest, onSecret)).digest("hex")}`;
}
