/** The progress bar of long copies: how far, how fast, how long still. */
import { formatBytes, formatDuration, type Output } from "../ui/output.js";

export interface ProgressState {
  phase: string;
  done: number;
  total?: number;
  /** Bytes per second, recent. */
  rate?: number;
}

export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(bytesPerSecond)}/s`;
}

/** Durations of a copy: tenths of a second while short, then formatDuration's style. */
export function formatElapsed(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)}s` : formatDuration(ms);
}

/** One status line, short enough for an 80-column terminal. */
export function formatProgress(s: ProgressState, barWidth = 16): string {
  const parts = [s.phase.padEnd(9)];
  if (s.total !== undefined && s.total > 0) {
    const frac = Math.min(1, s.done / s.total);
    const filled = Math.round(frac * barWidth);
    parts.push(`[${"#".repeat(filled)}${"-".repeat(barWidth - filled)}]`, `${String(Math.floor(frac * 100)).padStart(3)}%`);
    parts.push(`${formatBytes(s.done)}/${formatBytes(s.total)}`);
  } else {
    parts.push(formatBytes(s.done));
  }
  if (s.rate !== undefined && s.rate > 0) {
    parts.push(formatRate(s.rate));
    if (s.total !== undefined && s.total > s.done) parts.push(`${formatDuration(((s.total - s.done) / s.rate) * 1000)} left`);
  }
  return parts.join(" ");
}

export interface Progress {
  update(done: number): void;
  /** Elapsed milliseconds since start. */
  elapsed(): number;
}

/**
 * Throttled status lines: several a second on a terminal, one every few
 * seconds in a log. The rate is measured over the last few seconds, so that
 * a card's slow-down shows and the time left follows it.
 */
export function createProgress(out: Output, phase: string, total: number | undefined, live: boolean, now: () => number = () => performance.now()): Progress {
  const start = now();
  const interval = live ? 250 : 10_000;
  const window = 5_000;
  const samples: { t: number; done: number }[] = [{ t: start, done: 0 }];
  let lastShown = start;
  return {
    update(done) {
      const t = now();
      samples.push({ t, done });
      while (samples.length > 2 && samples[1]!.t < t - window) samples.shift();
      if (t - lastShown < interval) return;
      lastShown = t;
      const first = samples[0]!;
      const rate = t > first.t ? ((done - first.done) * 1000) / (t - first.t) : undefined;
      out.status(formatProgress({ phase, done, ...(total !== undefined ? { total } : {}), ...(rate !== undefined ? { rate } : {}) }));
    },
    elapsed: () => now() - start,
  };
}
