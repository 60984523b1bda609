import { PibakeError } from "../errors.js";
import type { Problem } from "./types.js";

/** A check written as "throw when wrong", as a problem to report with the others. */
export async function problemOf(check: () => unknown): Promise<Problem | undefined> {
  try {
    await check();
    return undefined;
  } catch (err) {
    if (err instanceof PibakeError) return { what: err.message };
    throw err;
  }
}

/** One problem as it is; several as a list under a heading, each with its fix. */
export function formatProblems(problems: readonly Problem[], heading = "pibake cannot build here yet"): string {
  const indent = (text: string) => text.replace(/\n/g, "\n    ");
  return `${heading}:\n${problems.map((p) => `  - ${indent(p.what)}${p.fix ? `\n    fix: ${p.fix}` : ""}`).join("\n")}`;
}

/** The build's preflight problems as one error: exit 2 when the config or options are wrong, 1 when the machine is not ready. */
export function problemsError(problems: readonly Problem[], heading?: string): PibakeError {
  const code = problems.some((p) => p.usage) ? 2 : 1;
  if (problems.length === 1 && !problems[0]!.fix) return new PibakeError(problems[0]!.what, code);
  return new PibakeError(formatProblems(problems, heading), code);
}
