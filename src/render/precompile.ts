/**
 * Build step of `npm run build`: every Handlebars template under overlays/
 * and stages/ compiled ahead into PRECOMPILED_FILE, with the SHA-256 of its
 * source, for templates.ts to load with Handlebars' runtime alone.
 */
import Handlebars from "handlebars";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeFileAtomicSync } from "../host/files.js";
import { overlaysDir, stagesDir } from "../paths.js";
import { COMPILE_OPTIONS, PRECOMPILED_FILE, sourceDigest, templateKey } from "./templates.js";

/** Every `.hbs` file below the template directories, sorted. */
export function templateFiles(dirs: string[] = [overlaysDir, stagesDir]): string[] {
  const under = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
      const p = path.join(dir, e.name);
      return e.isDirectory() ? under(p) : e.name.endsWith(".hbs") ? [p] : [];
    });
  return dirs.flatMap(under).sort();
}

/** The text of the CommonJS module: `{ "<key>": { sha256, spec } }`, each spec Handlebars' precompiled JavaScript. */
export function precompiledModule(files: string[] = templateFiles()): string {
  const entries = files.map((file) => {
    const source = readFileSync(file, "utf8");
    return `  ${JSON.stringify(templateKey(file))}: { sha256: ${JSON.stringify(sourceDigest(source))}, spec: ${Handlebars.precompile(source, COMPILE_OPTIONS)} },`;
  });
  return [
    `// Made by npm run build (src/render/precompile.ts) from overlays/ and stages/: do not edit.`,
    `"use strict";`,
    "module.exports = {",
    ...entries,
    "};",
    "",
  ].join("\n");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileAtomicSync(PRECOMPILED_FILE, precompiledModule());
}
