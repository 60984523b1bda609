import { spawnSync } from "node:child_process";
import type { Command } from "./process.js";

/**
 * A short question to a program whose answer is needed at once, while a path
 * or a name is being decided (the user database): synchronous, and light
 * (no execa), so that the commands that start fast stay fast. Long work and
 * anything with progress goes through process.ts.
 */

/** Its standard output when it exited with one of its ok codes (default 0); undefined when it did not, or is not installed. */
export function askSync(c: Command): string | undefined {
  const r = spawnSync(c.cmd, c.args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  if (r.error || r.status === null) return undefined;
  const ok = c.okCodes === "any" || (c.okCodes ?? [0]).includes(r.status);
  return ok ? r.stdout : undefined;
}
