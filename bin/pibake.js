#!/usr/bin/env node
// A checkout that was never compiled (or never installed) would end in ERR_MODULE_NOT_FOUND
// and a stack trace: say what to run instead.
let cli;
try {
  cli = await import("../dist/cli.js");
} catch (err) {
  if (err?.code !== "ERR_MODULE_NOT_FOUND") throw err;
  const root = new URL("..", import.meta.url).pathname;
  const dist = new URL("../dist/", import.meta.url).pathname;
  // "Cannot find module '/…/dist/cli.js' imported from …", or "Cannot find package 'cac' …".
  const missing = /Cannot find (?:module|package) '([^']+)'/.exec(String(err.message))?.[1] ?? String(err.message);
  process.stderr.write(
    missing.startsWith(dist)
      ? `pibake: pibake is not compiled (${missing} is missing): run npm run build in ${root}\n`
      : `pibake: ${missing}, which pibake needs, is not installed: run npm ci in ${root}, then npm run build\n`,
  );
  process.exit(1);
}
cli.main(process.argv);
