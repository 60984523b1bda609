import { execa } from "execa";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { repoRoot, tempDir } from "./helpers/cli.js";

/**
 * The CLI's last resort (src/cli.ts runCommand, src/cleanup.ts unwindAll): an
 * exception thrown from an event handler inside a running build step, run as
 * a process (test/helpers/crash-in-step.mjs) since it ends one.
 */
let tmp: ReturnType<typeof tempDir>;
afterEach(() => tmp?.cleanup());

async function crash(mode: "unwinds" | "stuck", debug = false) {
  tmp = tempDir("pibake-crash-");
  const script = path.join(repoRoot, "test/helpers/crash-in-step.mjs");
  const r = await execa(process.execPath, [script, tmp.dir, mode, ...(debug ? ["--debug"] : [])], {
    reject: false,
    cwd: repoRoot,
    timeout: 30_000,
    env: { CI: "true" },
  });
  return { ...r, failures: r.stderr.split("\n").filter((l) => l.startsWith("pibake: ")) };
}

describe("an exception that escapes everything", () => {
  it("stops the step as a failure: clean-up run, the step and the kept log named, no stack, exit 1", async () => {
    const r = await crash("unwinds");
    expect(r.exitCode, r.stderr).toBe(1);
    expect(readFileSync(path.join(tmp.dir, "cleaned-up"), "utf8")).toBe("yes\n");
    expect(existsSync(path.join(tmp.dir, "work"))).toBe(false);
    const log = path.join(tmp.dir, "build.failed.log");
    expect(r.failures).toEqual([
      'pibake: step "download base" failed: could not get the official Raspberry Pi OS Lite image: unexpected error: The expression evaluated to a falsy value: assert(!this.paused)',
    ]);
    expect(r.stderr).toContain(`The full log: ${log}`);
    expect(readFileSync(log, "utf8")).toMatch(/FAILED in step download base: The expression evaluated to a falsy value/);
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it("with --debug, shows the stack of the exception itself", async () => {
    const r = await crash("unwinds", true);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/^Error: The expression evaluated to a falsy value.*\n\s+at EventEmitter\.onSocketEnd /m);
    expect(existsSync(path.join(tmp.dir, "cleaned-up"))).toBe(true);
  });

  it("a step that never ends: its clean-up runs regardless after the grace, one line naming the step and the kept log, exit 1", async () => {
    const t0 = Date.now();
    const r = await crash("stuck");
    expect(r.exitCode, r.stderr).toBe(1);
    expect(existsSync(path.join(tmp.dir, "cleaned-up"))).toBe(true);
    expect(existsSync(path.join(tmp.dir, "work"))).toBe(false);
    const log = path.join(tmp.dir, "build.failed.log");
    expect(r.failures).toEqual([
      `pibake: unexpected error in step "download base" (the full log: ${log}): The expression evaluated to a falsy value: assert(!this.paused)`,
    ]);
    expect(readFileSync(log, "utf8")).toMatch(/FAILED in step download base, which did not stop: The expression evaluated to a falsy value/);
    expect(r.stderr).toContain("(run again with --debug for details)");
    // The grace (1 s here) and the wait for the command's own report (2 s), not the handle that would keep it alive.
    expect(Date.now() - t0).toBeLessThan(20_000);
  });
});
