import { PibakeError } from "../errors.js";
import { debianPackage, findProgram, missingProgramsMessage } from "../host/tools.js";
import type { Problem, Requirement } from "./types.js";

/** Each program as a requirement: where it was found, or the package that has it. */
export function programRequirements(names: readonly string[], neededBy: string): Requirement[] {
  return [...new Set(names)].map((name) => {
    const found = findProgram(name);
    return { need: name, program: { name, package: debianPackage(name), neededBy }, ...(found ? { met: found } : {}) };
  });
}

/** A check that returns its problem (or nothing) as a requirement. */
export function requirement(need: string, met: string, problem: Problem | string | undefined, extra: Partial<Requirement> = {}): Requirement {
  if (problem === undefined) return { need, met, ...extra };
  return { need, problem: typeof problem === "string" ? { what: problem } : problem, ...extra };
}

/**
 * What stops the build: every unmet requirement, the missing programs of
 * each part of the build as one problem with one apt-get line.
 */
export function problemsOf(requirements: readonly Requirement[]): Problem[] {
  const problems: Problem[] = [];
  const missing = new Map<string, { at: number; names: string[] }>();
  for (const r of requirements) {
    if (r.met !== undefined) continue;
    if (!r.program) {
      problems.push(r.problem ?? { what: `${r.need} is missing` });
      continue;
    }
    const slot = missing.get(r.program.neededBy);
    if (slot) slot.names.push(r.program.name);
    else {
      // Reported where the first missing program was.
      missing.set(r.program.neededBy, { at: problems.length, names: [r.program.name] });
      problems.push({ what: "" });
    }
  }
  for (const [neededBy, { at, names }] of missing) problems[at] = { what: missingProgramsMessage(names, neededBy) };
  return problems;
}

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
