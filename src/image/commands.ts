import type { Command } from "../host/process.js";

/**
 * The programs that read and write compressed images, as pure command
 * builders: the arguments are decided here and tested as data
 * (test/commands.test.ts); host/process.ts runs them.
 */

/** The raw image on standard output, all cores for xz; a name that looks like an option stays a name. */
export const decompress = (kind: "xz" | "zstd", file: string): Command => ({
  cmd: kind,
  args: kind === "xz" ? ["-dc", "-T0", "--", file] : ["-dc", "-q", "--", file],
  what: `decompressing ${file}`,
});

/**
 * Standard input compressed to standard output, all cores. zstd is told the
 * size, which it records in the frame header (zstdSize reads it back).
 */
export const compress = (kind: "xz" | "zstd", size: number): Command => ({
  cmd: kind,
  args: kind === "xz" ? ["-T0", "-c", "-z", "-"] : ["-T0", "-q", "-c", `--stream-size=${size}`, "-"],
  what: `compressing the image with ${kind}`,
});

/** `xz --robot --list`: one line per stream and a totals line, tab-separated; a file xz cannot read is a failing exit. */
export const listXz = (file: string): Command => ({ cmd: "xz", args: ["--robot", "--list", "--", file], what: `reading the sizes in ${file}`, okCodes: "any" });

/** `zstd -lv`: the frame header's content size, when zstd compressed a file rather than a pipe. */
export const listZstd = (file: string): Command => ({ cmd: "zstd", args: ["-lv", "--", file], what: `reading the sizes in ${file}`, okCodes: "any" });
