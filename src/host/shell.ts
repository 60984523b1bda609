/**
 * The one shell quoter: what pibake hands to a shell (on the build machine,
 * in a chroot, or on the Pi over ssh) and what the templates write into
 * shell scripts. No imports: render/ uses it and stays free of processes.
 */

/** Single-quote for POSIX shells: the value cannot end the quote or expand anything. */
export function shellQuote(value: unknown): string {
  return `'${String(value).replace(/'/g, `'\\''`)}'`;
}

/** The lines of a file in the shell's comment style (fstab, pi-gen's lists): `#` to the end of a line removed, trimmed, empty lines left out. */
export function uncommentedLines(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.replace(/#.*$/, "").trim())
    .filter(Boolean);
}
