import { execa } from "execa";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { bin, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";

/**
 * Start-up: cac knows every command's options and help at start, but a
 * command's code is imported only when that command runs. A module-load hook
 * lists what the process loaded.
 */
const HOOK = `export async function load(url, context, next) { process.stderr.write("LOADED " + url + "\\n"); return next(url, context); }`;
const REGISTER = `import { register } from "node:module"; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(HOOK)}`)});`;

async function loaded(args: string[], env: Record<string, string> = {}): Promise<{ modules: string[]; exitCode: number | undefined; stdout: string }> {
  const r = await execa(process.execPath, ["--import", `data:text/javascript,${encodeURIComponent(REGISTER)}`, bin, ...args], {
    reject: false,
    env: { ...env, CI: "true", PIBAKE_OFFLINE: "1" },
    cwd: repoRoot,
    stdin: "ignore",
    timeout: 60_000,
  });
  const modules = String(r.stderr)
    .split("\n")
    .filter((l) => l.startsWith("LOADED file://"))
    .map((l) => path.relative(repoRoot, new URL(l.slice("LOADED ".length)).pathname));
  return { modules, exitCode: r.exitCode, stdout: String(r.stdout) };
}

const heavy = (modules: string[]) =>
  modules.filter(
    (m) =>
      /^node_modules\/(?!cac\/)/.test(m) || /^dist\/(config|render|secrets|registry|engines|image|flash)\//.test(m) || /^dist\/commands\/(?!index\.js)/.test(m),
  );

describe("start-up", () => {
  for (const args of [["--version"], ["--help"], ["build", "--help"], ["init", "--help"], []]) {
    it(`pibake ${args.join(" ") || "(no command)"} loads cac and no command's code`, async () => {
      const r = await loaded(args);
      expect(r.exitCode).toBe(0);
      expect(r.modules).toContain("dist/cli.js");
      expect(heavy(r.modules)).toEqual([]);
    });
  }

  it("pibake --help still lists every command with its options", async () => {
    const r = await loaded(["build", "--help"]);
    expect(r.stdout).toMatch(/--base <image>/);
    expect(r.stdout).toMatch(/--base-stages <dir>/);
    const all = await loaded(["--help"]);
    for (const c of [
      "init [file]",
      "render <config>",
      "validate <config>",
      "schema",
      "ca <action> [config]",
      "flash <image> [device]",
      "images [action]",
      "check <config> [host]",
      "push <config> <host>",
      "build <config>",
    ])
      expect(all.stdout).toContain(c);
  });

  it("pibake validate loads the config's code, not the renderer, the engines or flash", async () => {
    const { dir, cleanup } = tempDir();
    try {
      const r = await loaded(["validate", writeJson(path.join(dir, "c.json"), validConfig())], secretEnv);
      expect(r.exitCode).toBe(0);
      expect(r.modules).toContain("dist/config/load.js");
      expect(r.modules.filter((m) => /^dist\/(render|secrets\/(pki|index)|engines|image|flash)\/|node-forge|bcryptjs|handlebars|execa/.test(m))).toEqual([]);
    } finally {
      cleanup();
    }
  });
});
