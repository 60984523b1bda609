import { describe, expect, it } from "vitest";
import { execa } from "execa";
import { shellQuote } from "../src/host/shell.js";

describe("shellQuote", () => {
  it.each<[string, unknown, string]>([
    ["a plain word", "mosquitto", "'mosquitto'"],
    ["the empty string", "", "''"],
    ["a single quote", "it's", `'it'\\''s'`],
    ["expansions stay text", "$HOME `id` $(id) *", "'$HOME `id` $(id) *'"],
    ["a number", 1883, "'1883'"],
  ])("%s", (_name, value, quoted) => {
    expect(shellQuote(value)).toBe(quoted);
  });

  it("reads back every value unchanged through sh", async () => {
    const odd = ["", "a b", "it's", "'", "''", "$HOME", "`id`", "\\n", "line\nbreak", "-n", "*"];
    const r = await execa("sh", ["-c", `for a in ${odd.map(shellQuote).join(" ")}; do printf '%s\\0' "$a"; done`]);
    expect(r.stdout.split("\0").slice(0, -1)).toEqual(odd);
  });
});
