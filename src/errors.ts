/**
 * Errors meant for users: the CLI prints their message without a stack trace
 * and exits with their code. Anything else is a bug and shows its stack.
 */
export class PibakeError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "PibakeError";
  }
}

/** One problem in the config, named by its JSON path. */
export interface ConfigIssue {
  path: string;
  message: string;
}

/** A config that cannot be used: exit code 2, every problem listed at once. */
export class ConfigError extends PibakeError {
  constructor(readonly issues: ConfigIssue[]) {
    super(
      `the config is not valid (${issues.length} problem${issues.length === 1 ? "" : "s"}):\n` +
        issues.map((i) => `  ${i.path ? `${i.path}: ` : ""}${i.message}`).join("\n"),
      2,
    );
    this.name = "ConfigError";
  }
}

/** Ctrl-C or SIGTERM: the work was stopped on purpose. */
export class InterruptedError extends PibakeError {
  constructor(
    readonly signal: string,
    detail?: string,
  ) {
    super(`interrupted by ${signal}${detail ? `: ${detail}` : ""}`, 130);
    this.name = "InterruptedError";
  }
}
