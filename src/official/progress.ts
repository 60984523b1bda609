/** Progress of fetching an official image: what the callback receives, and lines to print. */
import { formatBytes, formatDuration } from "../ui/output.js";

export interface ImageProgress {
  /** download: bytes of the .img.xz arriving; check: bytes of the image decompressed and hashed. */
  phase: "download" | "check";
  fileName: string;
  done: number;
  total?: number;
  /** Recent speed, bytes per second. */
  bytesPerSecond?: number;
  /** Seconds left at that speed. */
  etaSeconds?: number;
  /** Bytes that were already there from an interrupted download. */
  resumedFrom?: number;
}

/** One line, for a status line on a terminal and for plain logs alike. */
export function formatImageProgress(p: ImageProgress): string {
  const verb = p.phase === "download" ? "downloading" : "checking";
  const parts: string[] = [];
  if (p.total !== undefined && p.total > 0) {
    parts.push(`${formatBytes(p.done)} of ${formatBytes(p.total)} (${Math.floor(Math.min(1, p.done / p.total) * 100)}%)`);
  } else parts.push(formatBytes(p.done));
  if (p.bytesPerSecond !== undefined && p.bytesPerSecond > 0) parts.push(`${formatBytes(p.bytesPerSecond)}/s`);
  if (p.etaSeconds !== undefined && Number.isFinite(p.etaSeconds) && p.done < (p.total ?? Infinity)) parts.push(`${formatDuration(p.etaSeconds * 1000)} left`);
  if (p.resumedFrom) parts.push(`resumed at ${formatBytes(p.resumedFrom)}`);
  return `${verb} ${p.fileName}: ${parts.join(", ")}`;
}

/**
 * A progress callback for logs without a terminal: a line when a phase
 * starts or ends, and between them at most one every `intervalMs`.
 */
export function plainProgressPrinter(write: (line: string) => void, intervalMs = 10_000, now: () => number = Date.now): (p: ImageProgress) => void {
  let lastPhase: string | undefined;
  let lastAt = -Infinity;
  return (p) => {
    const t = now();
    const finished = p.total !== undefined && p.done >= p.total;
    if (p.phase !== lastPhase || finished || t - lastAt >= intervalMs) {
      lastPhase = p.phase;
      lastAt = t;
      write(formatImageProgress(p));
    }
  };
}

/**
 * Speed over the last few seconds, so that the time left follows a
 * connection that slows down; reports at most every `intervalMs`, and always the last.
 */
export function progressMeter(
  phase: ImageProgress["phase"],
  fileName: string,
  total: number | undefined,
  onProgress: ((p: ImageProgress) => void) | undefined,
  opts: { intervalMs?: number; resumedFrom?: number; now?: () => number } = {},
): { update(done: number, final?: boolean): void } {
  const now = opts.now ?? (() => performance.now());
  const intervalMs = opts.intervalMs ?? 250;
  const windowMs = 5_000;
  const samples: { t: number; done: number }[] = [];
  let lastReport = -Infinity;
  return {
    update(done, final = false) {
      if (!onProgress) return;
      const t = now();
      samples.push({ t, done });
      while (samples.length > 2 && samples[0]!.t < t - windowMs) samples.shift();
      if (!final && t - lastReport < intervalMs) return;
      lastReport = t;
      const first = samples[0]!;
      const rate = t > first.t ? ((done - first.done) * 1000) / (t - first.t) : undefined;
      onProgress({
        phase,
        fileName,
        done,
        ...(total !== undefined ? { total } : {}),
        ...(rate !== undefined && rate > 0 ? { bytesPerSecond: rate } : {}),
        ...(rate !== undefined && rate > 0 && total !== undefined ? { etaSeconds: Math.max(0, (total - done) / rate) } : {}),
        ...(opts.resumedFrom ? { resumedFrom: opts.resumedFrom } : {}),
      });
    },
  };
}
