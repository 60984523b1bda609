/**
 * pi-gen logs `[HH:MM:SS] Begin <path>` and `[HH:MM:SS] End <path>` around
 * every stage, sub-stage and script, and `Build failed` when it stops. This
 * turns that stream into where the build is, how long each stage took, and
 * which script failed.
 */

export type LogEvent = { kind: "begin" | "end"; path: string; stage?: string; subStage?: string; step?: string } | { kind: "failed" } | { kind: "finished" };

const LINE_RE = /^\[(\d\d:\d\d:\d\d)\] (Begin|End) (.+)$/;

/** Split a pi-gen path into its stage, sub-stage and script (relative to the stage directory). */
export function locate(p: string): { stage?: string; subStage?: string; step?: string } {
  const parts = p.replace(/\/+$/, "").split("/");
  const idx = parts.findIndex((x) => /^(stage[^/]*|export-image|export-noobs)$/.test(x));
  if (idx < 0) return {};
  const stage = parts[idx]!;
  const subStage = parts[idx + 1];
  const step = parts[idx + 2];
  return { stage, ...(subStage ? { subStage } : {}), ...(step ? { step } : {}) };
}

export function parseLine(line: string): LogEvent | undefined {
  const m = LINE_RE.exec(line.trim());
  if (m) {
    return { kind: m[2] === "Begin" ? "begin" : "end", path: m[3]!, ...locate(m[3]!) };
  }
  if (/\] Build failed$/.test(line.trim())) return { kind: "failed" };
  if (/\] Build finished$/.test(line.trim())) return { kind: "finished" };
  return undefined;
}

/** Follows a build: what runs now, what finished, and stage durations for the next estimate. */
export class PiGenProgress {
  private readonly open: string[] = [];
  private stageStarted = new Map<string, number>();
  readonly stageDurations: Record<string, number> = {};

  constructor(private readonly now: () => number = Date.now) {}

  feed(line: string): LogEvent | undefined {
    const e = parseLine(line);
    if (!e) return undefined;
    if (e.kind === "begin") {
      this.open.push(e.path);
      if (e.stage && !e.subStage) this.stageStarted.set(e.stage, this.now());
    }
    if (e.kind === "end") {
      const i = this.open.lastIndexOf(e.path);
      if (i >= 0) this.open.splice(i, 1);
      if (e.stage && !e.subStage) {
        const t = this.stageStarted.get(e.stage);
        if (t !== undefined) this.stageDurations[e.stage] = this.now() - t;
      }
    }
    return e;
  }

  /** The innermost thing running, as "stage2 › 01-sys-tweaks › 01-run.sh". */
  current(): string | undefined {
    // pi-gen's outermost Begin is its own directory, which names no stage.
    for (const p of [...this.open].reverse()) {
      const l = locate(p);
      if (l.stage) return [l.stage, l.subStage, l.step].filter(Boolean).join(" › ");
    }
    return undefined;
  }

  /** After a failure: the innermost step that began and never ended. */
  failedStep(): string | undefined {
    return this.current();
  }
}

/** Seconds left from the last build's stage durations, or undefined without history. */
export function estimateRemaining(
  previous: Record<string, number> | undefined,
  stages: string[],
  done: Record<string, number>,
  currentStage?: string,
  currentElapsed = 0,
): number | undefined {
  if (!previous) return undefined;
  let ms = 0;
  for (const s of stages) {
    if (done[s] !== undefined) continue;
    const p = previous[s];
    if (p === undefined) return undefined;
    ms += s === currentStage ? Math.max(0, p - currentElapsed) : p;
  }
  return ms;
}
