/**
 * Everything pibake prints goes through here, so that one place decides how it
 * looks; every line is redacted (host/redact.ts), so that no secret value is ever printed.
 */
import { redact } from "../host/redact.js";

/**
 * Whether status lines may replace each other with control codes: only on a
 * terminal that understands them. TERM=dumb (Emacs' shell, some CI consoles)
 * shows "\x1b[2K" as text, and a file or pipe keeps every one.
 */
export function canRedraw(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  return stream.isTTY === true && env.CI !== "true" && env.TERM !== "dumb";
}

/**
 * Standard output that cannot be written is not a bug to show a stack for.
 * EPIPE: the reader stopped (`pibake schema | head -1`), so the rest is not
 * wanted; the command still finishes, so that its clean-up runs. Anything else
 * (ENOSPC on a full disk) is said once and fails the run: the output is incomplete.
 */
const guarded = new WeakSet<NodeJS.WritableStream>();

export function guardOutputStreams(stdout: NodeJS.WritableStream = process.stdout, stderr: NodeJS.WritableStream = process.stderr): void {
  // Once per stream, however often main() runs in one process.
  if (guarded.has(stdout)) return;
  guarded.add(stdout);
  let said = false;
  stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (said || err.code === "EPIPE") return;
    said = true;
    process.exitCode = 1;
    stderr.write(
      `pibake: cannot write to standard output: ${err.code ? `${err.code} (${err.message.replace(/^\w+: /, "").replace(/, write$/, "")})` : err.message}\n`,
    );
  });
  // Nowhere is left to report a broken standard error.
  stderr.on("error", () => {});
}

export interface Output {
  /** True when status lines replace each other on a terminal; plain lines otherwise (log files, CI). */
  readonly live: boolean;
  info(message: string): void;
  warn(message: string): void;
  /** A line of progress on long work; on a terminal the next status line replaces it. */
  status(message: string): void;
  /** Raw output of a child process, shown only with --verbose. */
  verbose(message: string): void;
}

export interface OutputOptions {
  verbose?: boolean;
  quiet?: boolean;
  plain?: boolean;
  stdout?: NodeJS.WriteStream;
  stderr?: NodeJS.WriteStream;
}

export function createOutput(opts: OutputOptions = {}): Output {
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const live = !opts.plain && canRedraw(stderr);
  let statusShown = false;
  const clearStatus = () => {
    if (statusShown) {
      stderr.write("\r\x1b[2K");
      statusShown = false;
    }
  };
  return {
    live,
    info(message) {
      if (opts.quiet) return;
      clearStatus();
      stdout.write(redact(message) + "\n");
    },
    warn(message) {
      clearStatus();
      stderr.write(`warning: ${redact(message)}\n`);
    },
    status(message) {
      if (opts.quiet) return;
      const text = redact(message);
      if (live) {
        // A pseudo-terminal without a size reports 0 columns.
        const width = (stderr.columns || 80) - 1;
        stderr.write(`\r\x1b[2K${text.length > width ? text.slice(0, width) : text}`);
        statusShown = true;
      } else {
        stderr.write(text + "\n");
      }
    },
    verbose(message) {
      if (!opts.verbose) return;
      clearStatus();
      stderr.write(redact(message) + (message.endsWith("\n") ? "" : "\n"));
    },
  };
}

/** Human sizes for progress lines. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
