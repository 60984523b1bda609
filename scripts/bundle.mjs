// Build step of npm run build, after tsc: each file below, a module of src/ that only re-exports
// what pibake takes from a package, becomes one file holding those names and what they need,
// instead of the package's modules one by one: Node's module loader pays for each module it
// resolves, reads and links (zod is some 95 of them with its 60 locales, Handlebars' runtime 20,
// tar-stream with its dependencies 14), and a render's start-up was mostly that. Without this
// step each file still works, as the plain re-export it is.
import { build } from "rolldown";
import path from "node:path";
import { fileURLToPath } from "node:url";

const dist = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "dist");
const FILES = ["config/zod.js", "config/jsonc.js", "render/tar-stream.js", "render/handlebars-runtime.js"];

for (const name of FILES) {
  const file = path.join(dist, name);
  await build({
    input: file,
    platform: "node",
    logLevel: "warn",
    // jsonc-parser's main is a UMD module that requires its parts by computed names; its ES modules bundle.
    resolve: { mainFields: ["module", "main"] },
    output: {
      file,
      format: "esm",
      sourcemap: true,
      banner: `// Made by npm run build (scripts/bundle.mjs) from src/${name.replace(/\.js$/, ".ts")} and its package: do not edit.`,
    },
  });
}
