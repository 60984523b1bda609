import { createHmac, randomBytes } from "node:crypto";
import type { Model } from "../config/model.js";
import { configDigest } from "../config/digest.js";
import type { StateDir } from "./state.js";

/**
 * The config's digest: sha256 of the validated config (every default applied)
 * with each secret replaced by "***", and, separately, an HMAC of the secret
 * values keyed with a random key kept in the state directory: a changed
 * password changes it, yet nobody without the state directory can test a
 * guess against it. The secrets themselves are never written.
 */
export function configDigests(model: Model, state: StateDir): { digest: string; secretsHmac: string } {
  const secrets: string[] = [];
  const digest = configDigest(model, (s) => secrets.push(s.reveal()));
  let key = state.read("manifest-hmac-key")?.trim();
  if (!key) {
    key = randomBytes(32).toString("hex");
    state.write("manifest-hmac-key", key);
  }
  const hmac = createHmac("sha256", Buffer.from(key, "hex"));
  for (const s of secrets) hmac.update(s).update("\0");
  return { digest, secretsHmac: `hmac-sha256:${hmac.digest("hex")}` };
}
