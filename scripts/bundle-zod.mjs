// Build step of npm run build, after tsc: dist/config/zod.js (the names schema.ts takes from zod)
// becomes one file with the parts of zod they need, instead of zod's some 95 modules: Node's ES
// module loader pays for each module it resolves, reads and links, and zod loads all its locales.
import { build } from "rolldown";
import path from "node:path";
import { fileURLToPath } from "node:url";

const file = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "dist", "config", "zod.js");
await build({
  input: file,
  platform: "node",
  logLevel: "warn",
  output: { file, format: "esm", sourcemap: true, banner: "// Made by npm run build (scripts/bundle-zod.mjs) from src/config/zod.ts and zod: do not edit." },
});
