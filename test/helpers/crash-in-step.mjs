// A build step in miniature, run as its own process by test/last-resort.test.ts:
// the build's own scope (inBuildScope) under the CLI's runCommand, a clean-up
// that leaves a mark, and an exception thrown from an event handler, where no
// caller can catch it (as undici's parser once threw from a socket's "end").
//   node crash-in-step.mjs DIR unwinds|stuck [--debug]
import { EventEmitter } from "node:events";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { inBuildScope } from "../../dist/build.js";
import { runCommand } from "../../dist/cli.js";
import { createOutput } from "../../dist/ui/output.js";

const [dir, mode] = process.argv.slice(2);
const debug = process.argv.includes("--debug");
const workDir = path.join(dir, "work");

await runCommand(
  () =>
    inBuildScope(
      {
        workDir,
        logPath: path.join(workDir, "build.log"),
        firstLine: "crash-in-step.mjs",
        steps: [
          { title: "render", failure: "could not render the config" },
          { title: "download base", failure: "could not get the official Raspberry Pi OS Lite image" },
        ],
        out: createOutput({ plain: true }),
        failedLog: () => path.join(dir, "build.failed.log"),
      },
      async (scope, steps) => {
        steps.begin("render");
        steps.begin("download base");
        scope.defer(() => writeFileSync(path.join(dir, "cleaned-up"), "yes\n"), "the mark");
        const socket = new EventEmitter();
        socket.on("end", function onSocketEnd() {
          throw new Error("The expression evaluated to a falsy value: assert(!this.paused)");
        });
        setTimeout(() => socket.emit("end"), 50);
        // The download: ended by the scope's signal, as pibake's are; or, stuck, by nothing (a handle keeps the process alive).
        await new Promise((_, reject) => {
          if (mode === "stuck") setInterval(() => {}, 60_000);
          else scope.signal.addEventListener("abort", () => reject(scope.signal.reason), { once: true });
        });
      },
    ),
  { debug: () => debug, graceMs: 1_000 },
);
