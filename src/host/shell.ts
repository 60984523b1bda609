/**
 * The one shell quoter: what pibake hands to a shell (on the build machine,
 * in a chroot, or on the Pi over ssh) and what the templates write into
 * shell scripts. No imports: render/ uses it and stays free of processes.
 */

/** Single-quote for POSIX shells: the value cannot end the quote or expand anything. */
export function shellQuote(value: unknown): string {
  return `'${String(value).replace(/'/g, `'\\''`)}'`;
}
