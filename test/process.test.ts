import { describe, expect, it } from "vitest";
import { run, runCommand, startPiped } from "../src/host/process.js";

/** The one process runner, against real programs (sh, cat). */
describe("run", () => {
  it("hands bytes to standard input unchanged", async () => {
    const bytes = Buffer.from([0x70, 0x77, 0x0a, 0x00, 0xff, 0x80, 0x0a]);
    const r = await run("sh", ["-c", "od -An -tx1 | tr -s ' \\n' ' '"], { what: "reading bytes", input: bytes });
    expect(r.stdout.trim()).toBe("70 77 0a 00 ff 80 0a");
  });

  it("keeps standard error apart from standard output, and both in the output", async () => {
    const r = await run("sh", ["-c", "echo out; echo err >&2; exit 3"], { what: "talking", okCodes: "any" });
    expect({ stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, timedOut: r.timedOut }).toEqual({
      stdout: "out",
      stderr: "err",
      exitCode: 3,
      timedOut: false,
    });
    expect(r.output.split("\n").sort()).toEqual(["err", "out"]);
  });

  it("says that a program was stopped because its time was up", async () => {
    const r = await run("sleep", ["10"], { what: "waiting", okCodes: "any", timeout: 200 });
    expect(r.timedOut).toBe(true);
    expect(r.exitCode).toBeUndefined();
  });
});

describe("startPiped", () => {
  it("streams bytes through, and says how the program ended with its standard error", async () => {
    const p = startPiped({ cmd: "sh", args: ["-c", "cat; echo done >&2; exit 5"], what: "piping" }, { stdin: "pipe" });
    const chunks: Buffer[] = [];
    p.stdout.on("data", (c: Buffer) => chunks.push(c));
    p.stdin.end(Buffer.from([0, 1, 2, 255]));
    const r = await p.done;
    expect(Buffer.concat(chunks)).toEqual(Buffer.from([0, 1, 2, 255]));
    expect(r).toMatchObject({ exitCode: 5, stderr: "done", canceled: false });
  });

  it("ends without rejecting when the program is missing, killed or cancelled", async () => {
    const missing = await startPiped({ cmd: "pibake-no-such-program", args: [], what: "x" }, { stdin: "ignore" }).done;
    expect(missing.exitCode).toBeUndefined();
    expect(missing.message).toMatch(/ENOENT/);
    const sleeper = startPiped({ cmd: "sleep", args: ["10"], what: "x" }, { stdin: "ignore" });
    sleeper.kill("SIGKILL");
    expect(await sleeper.done).toMatchObject({ exitCode: undefined, signal: "SIGKILL", canceled: false });
    const ac = new AbortController();
    const cancelled = startPiped({ cmd: "sleep", args: ["10"], what: "x" }, { stdin: "ignore", signal: ac.signal });
    ac.abort(new Error("stop"));
    expect((await cancelled.done).canceled).toBe(true);
  });
});

describe("runCommand", () => {
  it("gives the program the command's environment over the caller's", async () => {
    const r = await runCommand({ cmd: "sh", args: ["-c", 'echo "$A $B"'], what: "x", env: { A: "command" } }, { env: { A: "caller", B: "caller" } });
    expect(r.stdout).toBe("command caller");
  });
});
