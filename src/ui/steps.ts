import { InterruptedError, PibakeError } from "../errors.js";
import { formatDuration, type Output } from "./output.js";

/** One step of a build: its title, what the user is told when it fails. */
export interface StepSpec {
  title: string;
  failure: string;
}

/**
 * The only way an engine talks to the user (src/ui/steps.ts decides how it
 * looks): its steps begin or are skipped, status lines within one, lasting
 * lines, warnings, and tool output shown with --verbose. All of it goes to
 * the build's log too.
 */
export interface StepReporter {
  /** Whether status lines replace each other (a terminal) or each is a line of its own (a log, CI): throttle those. */
  readonly live: boolean;
  begin(title: string): void;
  skip(title: string, why: string): void;
  /** Progress within the step: a live line on a terminal, a plain line otherwise. */
  status(message: string): void;
  /** A line that stays: a decision the user should see ("regenerating: …"). */
  info(message: string): void;
  warn(message: string): void;
  /** A program's output line: shown with --verbose. */
  detail(line: string): void;
}

/** Where the steps are written down too: the build's log. */
interface LineLog {
  line(text: string): void;
}

/**
 * A build's steps as the user sees them: the same first and last steps for
 * every engine, the engine's own in between. Each has the message that a
 * failure in it starts with.
 */
export const RENDER_STEP: StepSpec = { title: "render", failure: "could not render the config (state directory, certificates, templates)" };
export const DELIVER_STEP: StepSpec = { title: "deliver", failure: "delivering the image failed (compress, checksum, bmap, manifest)" };

export function buildSteps(engineSteps: readonly StepSpec[]): StepSpec[] {
  return [RENDER_STEP, ...engineSteps, DELIVER_STEP];
}

/**
 * The steps as they run: a numbered line when each starts, its time when it
 * ends, status lines within it; all of it in the build's log too.
 */
export class Steps implements StepReporter {
  current: StepSpec | undefined;
  private started = 0;
  /** Milliseconds per step title, for the manifest. */
  readonly timings: Record<string, number> = {};

  get live(): boolean {
    return this.out.live;
  }

  constructor(
    readonly specs: readonly StepSpec[],
    private readonly out: Output,
    private readonly log?: LineLog,
  ) {}

  private spec(title: string): StepSpec {
    const s = this.specs.find((x) => x.title === title);
    if (!s) throw new Error(`no step "${title}" in this build`);
    return s;
  }

  private index(title: string): string {
    return `[${this.specs.findIndex((s) => s.title === title) + 1}/${this.specs.length}] `;
  }

  begin(title: string): void {
    const spec = this.spec(title);
    this.end();
    this.current = spec;
    this.started = Date.now();
    this.out.info(`${this.index(title)}${title}`);
    this.log?.line(`== step: ${title}`);
  }

  skip(title: string, why: string): void {
    this.spec(title);
    this.end();
    this.out.info(`${this.index(title)}${title}: skipped, ${why}`);
    this.log?.line(`== step: ${title}: skipped, ${why}`);
  }

  status(message: string): void {
    this.out.status(`      ${message}`);
    this.log?.line(`   ${message}`);
  }

  info(message: string): void {
    this.out.info(`      ${message}`);
    this.log?.line(`   ${message}`);
  }

  warn(message: string): void {
    this.out.warn(message);
    this.log?.line(`warning: ${message}`);
  }

  detail(line: string): void {
    this.out.verbose(line);
    this.log?.line(line);
  }

  end(): void {
    if (!this.current) return;
    const ms = Date.now() - this.started;
    this.timings[this.current.title] = ms;
    this.out.info(`      done in ${formatDuration(ms)}`);
    this.current = undefined;
  }

  /** The error the user sees: which step, what it was doing, why, and where the log is. */
  failure(err: unknown, logFile?: string): PibakeError {
    const step = this.current;
    const where = logFile ? `\nThe full log: ${logFile}` : "";
    if (err instanceof InterruptedError || (err instanceof PibakeError && err.exitCode === 130)) {
      return new PibakeError(`${err.message}${step ? ` during step "${step.title}"` : ""}: stopped and cleaned up; no image was written${where}`, 130);
    }
    const message = err instanceof Error ? err.message : String(err);
    const prefix = step ? `step "${step.title}" failed: ${step.failure}` : "the build failed";
    if (err instanceof PibakeError) return new PibakeError(`${prefix}:\n${message}${where}`, err.exitCode);
    return new PibakeError(`${prefix}: unexpected error: ${message}${where}`, 1, { cause: err });
  }
}
