import type { Command } from "../host/process.js";

/**
 * The programs that copy, map and (de)compress images, as pure command
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

/** A copy that keeps holes, or a reflink where the file system has them; a name that looks like an option stays a name. */
export const sparseCopy = (source: string, dest: string, what: string): Command => ({
  cmd: "cp",
  args: ["--reflink=auto", "--sparse=always", "--", source, dest],
  what,
});

/**
 * The file's extents, in filefrag's C-locale table (parseFilefrag reads it).
 * -s writes delayed allocations back first, so that every written block is in
 * the map; a file system that cannot say is a failing exit, and the caller
 * then reads the whole file.
 */
export const mapExtents = (file: string): Command => ({
  cmd: "filefrag",
  args: ["-s", "-e", file],
  what: "mapping the image's data",
  env: { LC_ALL: "C" },
  okCodes: "any",
});
