import { describe, expect, it } from "vitest";
import { askSync } from "../src/host/query.js";
import { homeOf, passwdQuery, userName } from "../src/host/sudo.js";

/** The synchronous question, against real programs, and the user database through it. */
describe("askSync", () => {
  it.each<[string, Parameters<typeof askSync>[0], string | undefined]>([
    ["standard output on exit 0", { cmd: "sh", args: ["-c", "echo yes; echo no >&2"], what: "x" }, "yes\n"],
    ["nothing on another exit code", { cmd: "sh", args: ["-c", "echo yes; exit 2"], what: "x" }, undefined],
    ["standard output on an exit code the command accepts", { cmd: "sh", args: ["-c", "echo yes; exit 2"], what: "x", okCodes: [0, 2] }, "yes\n"],
    ["nothing from a program that is not installed", { cmd: "pibake-no-such-program", args: [], what: "x" }, undefined],
  ])("%s", (_name, c, out) => {
    expect(askSync(c)).toBe(out);
  });
});

describe("the user database", () => {
  it("asks getent, by name or uid", () => {
    expect(passwdQuery("root")).toEqual({ cmd: "getent", args: ["passwd", "root"], what: "looking up root in the user database" });
    expect(homeOf("root")).toBe("/root");
    expect(userName(0)).toBe("root");
  });

  it("knows no user that is not there", () => {
    expect(homeOf("pibake-no-such-user")).toBeUndefined();
    expect(userName(4_000_000_000)).toBe("4000000000");
  });
});
