/** One line of `pibake check`: what was checked, how it went, and what to do about it. */
export type CheckStatus = "ok" | "warning" | "failed";

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

export const ok = (name: string, detail: string): CheckResult => ({ name, status: "ok", detail });
export const warning = (name: string, detail: string, fix?: string): CheckResult =>
  fix ? { name, status: "warning", detail, fix } : { name, status: "warning", detail };
export const failed = (name: string, detail: string, fix?: string): CheckResult =>
  fix ? { name, status: "failed", detail, fix } : { name, status: "failed", detail };

/**
 * Every network wait of a check run is bounded twice: by the per-check
 * timeout, and by one deadline for the whole run, so that an unreachable host
 * costs a known total however many checks would have waited for it.
 */
export class Budget {
  private readonly deadline: number;
  constructor(
    readonly perCheckMs: number,
    totalMs: number,
  ) {
    this.deadline = Date.now() + totalMs;
  }
  /** The wait a check may spend now: its own timeout, or what is left of the run's. */
  get ms(): number {
    return Math.max(1, Math.min(this.perCheckMs, this.deadline - Date.now()));
  }
  get exhausted(): boolean {
    return this.deadline - Date.now() <= 0;
  }
}
