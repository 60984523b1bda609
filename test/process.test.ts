import { describe, expect, it } from "vitest";
import { run } from "../src/host/process.js";

/** The one process runner, against real programs (sh, cat). */
describe("run", () => {
  it("hands bytes to standard input unchanged", async () => {
    const bytes = Buffer.from([0x70, 0x77, 0x0a, 0x00, 0xff, 0x80, 0x0a]);
    const r = await run("sh", ["-c", "od -An -tx1 | tr -s ' \\n' ' '"], { what: "reading bytes", input: bytes });
    expect(r.stdout.trim()).toBe("70 77 0a 00 ff 80 0a");
  });

  it("keeps standard error apart from standard output, and both in the output", async () => {
    const r = await run("sh", ["-c", "echo out; echo err >&2; exit 3"], { what: "talking", okCodes: "any" });
    expect({ stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, timedOut: r.timedOut }).toEqual({ stdout: "out", stderr: "err", exitCode: 3, timedOut: false });
    expect(r.output.split("\n").sort()).toEqual(["err", "out"]);
  });

  it("says that a program was stopped because its time was up", async () => {
    const r = await run("sleep", ["10"], { what: "waiting", okCodes: "any", timeout: 200 });
    expect(r.timedOut).toBe(true);
    expect(r.exitCode).toBeUndefined();
  });
});
