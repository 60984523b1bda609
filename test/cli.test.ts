/**
 * The command line's manners, on the built CLI as a user runs it: "did you
 * mean", exit 2 for every usage error, no stack trace when standard output
 * goes away or fills up, no control codes for TERM=dumb, help that says what
 * each command does, and examples that work as typed.
 */
import { execa } from "execa";
import { existsSync, promises as fsp, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createCli } from "../src/cli.js";
import { closest } from "../src/usage.js";
import { editDistance } from "../src/spelling.js";
import { bin, pibake, repoRoot, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { minimalMbr } from "./helpers/mbr.js";

const tmp = tempDir("pibake-cli-test-");
afterAll(tmp.cleanup);

/** One line on stderr, no stack trace. */
function oneLine(stderr: string): string {
  expect(stderr.split("\n")).toHaveLength(1);
  expect(stderr).not.toMatch(/\n\s+at |node:internal|Error:/);
  return stderr;
}

describe("did you mean", () => {
  it("suggests the command meant", async () => {
    const r = await pibake(["biuld", "broker.json"]);
    expect(r.exitCode).toBe(2);
    expect(oneLine(r.stderr)).toBe(`pibake: unknown command "biuld": did you mean "build"? (see pibake --help)`);
    const far = await pibake(["frobnicate"]);
    expect(far.exitCode).toBe(2);
    expect(far.stderr).toBe(`pibake: unknown command "frobnicate" (see pibake --help)`);
  });

  it("suggests the option meant, as typed (not camelCased)", async () => {
    const r = await pibake(["push", "broker.json", "192.168.1.10", "--dry-rn"]);
    expect(r.exitCode).toBe(2);
    expect(oneLine(r.stderr)).toBe(`pibake: unknown option --dry-rn for pibake push: did you mean "--dry-run"? (see pibake push --help)`);
    const flash = await pibake(["flash", "x.img", "--no-verfy"]);
    expect(flash.exitCode).toBe(2);
    expect(flash.stderr).toBe(`pibake: unknown option --no-verfy for pibake flash: did you mean "--no-verify"? (see pibake flash --help)`);
    const none = await pibake(["schema", "--dry-rn"]);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toBe("pibake: unknown option --dry-rn for pibake schema (see pibake schema --help)");
  });

  it("an unknown option without a command is an error, not the help", async () => {
    const r = await pibake(["--verison"]);
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe("");
    expect(oneLine(r.stderr)).toBe(`pibake: unknown option --verison for pibake: did you mean "--version"? (see pibake --help)`);
  });

  it("checks an action before reading the config", async () => {
    const r = await pibake(["ca", "exprot", path.join(tmp.dir, "missing.json")]);
    expect(r.exitCode).toBe(2);
    expect(oneLine(r.stderr)).toBe(`pibake: ca needs an action: "export" or "show", not "exprot": did you mean "export"? (see pibake ca --help)`);
    const images = await pibake(["images", "lst"]);
    expect(images.exitCode).toBe(2);
    expect(images.stderr).toBe(`pibake: images needs an action: "list", "prune" or "fetch", not "lst": did you mean "list"? (see pibake images --help)`);
  });

  it("suggests only what is close, and only one", () => {
    expect(editDistance("biuld", "build")).toBe(1);
    expect(closest("biuld", ["build", "render", "validate"])).toBe("build");
    expect(closest("rendr", ["build", "render"])).toBe("render");
    expect(closest("val", ["validate", "version"])).toBe("validate");
    expect(closest("--dry-rn", ["--dry-run", "--yes"])).toBe("--dry-run");
    expect(closest("xyz", ["build", "render"])).toBeUndefined();
    expect(closest("--port", ["--port-tls", "--port-lan"])).toBeUndefined();
  });
});

describe("usage errors exit 2 with one line", () => {
  const cfg = path.join(tmp.dir, "broker.json");
  it.each([
    [["render", "CFG"], /^pibake: render needs --out DIR/],
    [["render"], /^pibake: render needs CONFIG \(usage: pibake render <config> \[options\]\)$/],
    [["push", "CFG"], /^pibake: push needs HOST \(usage: pibake push <config> <host> \[options\]\)$/],
    [["build", "CFG", "--out"], /^pibake: --out needs a value \(usage: pibake build <config> \[options\]\)$/],
    [["validate", "CFG", "extra"], /^pibake: too many arguments: extra \(usage: pibake validate <config> \[options\]\)$/],
    [["validate", "missing.json"], /^pibake: config file .*missing\.json does not exist$/],
    [["flash", "missing.img", "copy.img"], /^pibake: image missing\.img does not exist$/],
    [["flash", "missing.img"], /^pibake: image missing\.img does not exist$/],
    [["images"], /^pibake: images needs an action: "list", "prune" or "fetch"$/],
    [["ca"], /^pibake: ca needs ACTION/],
  ])("pibake %j", async (args, message) => {
    writeFileSync(cfg, "{}");
    const r = await pibake(
      args.map((a) => (a === "CFG" ? cfg : a)),
      { cwd: tmp.dir },
    );
    expect(r.exitCode, r.stderr).toBe(2);
    expect(oneLine(r.stderr)).toMatch(message);
  });
});

describe("an option given twice", () => {
  it("--state: the last one counts, for render and ca alike", async () => {
    const cfg = path.join(tmp.dir, "twice.json");
    writeJson(cfg, validConfig());
    const [first, second] = [path.join(tmp.dir, "state-first"), path.join(tmp.dir, "state-second")];
    const r = await pibake(["render", cfg, "--out", path.join(tmp.dir, "twice-out"), "--state", first, "--state", second], {
      env: { ...secretEnv, PIBAKE_OFFLINE: "1" },
    });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(existsSync(path.join(second, "ca.crt"))).toBe(true);
    expect(existsSync(first)).toBe(false);
    const shown = await pibake(["ca", "show", "--state", first, "--state", second]);
    expect(shown.exitCode, shown.stderr).toBe(0);
  });
});

describe("a file or directory named that is not there is a usage error", () => {
  it("build --base, build --pi-gen, flash --bmap, ca export --out", async () => {
    const cfg = writeJson(path.join(tmp.dir, "valid.json"), validConfig());
    const state = path.join(tmp.dir, "state");
    await fsp.mkdir(state, { recursive: true });
    await fsp.writeFile(path.join(state, "ca.crt"), "-----BEGIN CERTIFICATE-----\n");
    const image = path.join(tmp.dir, "tiny.img");
    await fsp.writeFile(image, minimalMbr(0x83, 1, 7, 4096));
    const cases: [string[], string][] = [
      [["build", cfg, "--base", "missing.img", "--out", "out"], "--base missing.img: no such file; give a Raspberry Pi OS image"],
      [["build", cfg, "--pi-gen", "no-pi-gen", "--out", "out"], "--pi-gen no-pi-gen: not a pi-gen checkout (no build.sh)"],
      [["flash", image, "copy.img", "--bmap", "missing.bmap", "--yes"], "pibake: bmap missing.bmap does not exist"],
      [["ca", "export", "--state", state, "--out", "no-dir/ca.crt"], `pibake: --out no-dir/ca.crt: directory ${tmp.dir}/no-dir does not exist`],
    ];
    for (const [args, message] of cases) {
      const r = await pibake(args, { cwd: tmp.dir, env: secretEnv, timeout: 120_000 });
      expect(r.exitCode, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(" ")).toContain(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    expect(existsSync(path.join(tmp.dir, "copy.img"))).toBe(false);
  });
});

describe("standard output that goes away", () => {
  it("no stack trace when the reader stops early (EPIPE)", async () => {
    const child = execa(process.execPath, [bin, "schema"], { reject: false, stdin: "ignore", stdout: "pipe", env: { CI: "true" } });
    // The reader is gone before pibake writes a byte.
    child.stdout!.destroy();
    const r = await child;
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
  });

  it.skipIf(!existsSync("/dev/full"))("a full disk (ENOSPC) is one line and exit 1", async () => {
    const r = await execa("sh", ["-c", `"${process.execPath}" "${bin}" schema > /dev/full`], { reject: false, stdin: "ignore", env: { CI: "true" } });
    expect(r.exitCode).toBe(1);
    expect(oneLine(r.stderr)).toBe("pibake: cannot write to standard output: ENOSPC (no space left on device)");
  });
});

/** Run a command on a pseudo-terminal (util-linux script), with TERM as given; what the terminal received. */
async function onTerminal(command: string, term: string, cwd = repoRoot): Promise<string> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/root", TERM: term };
  const r = await execa("script", ["-qec", command, "/dev/null"], { reject: false, env, extendEnv: false, cwd, stdin: "ignore", timeout: 120_000 });
  expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
  return String(r.stdout);
}

const hasScript = (await execa("script", ["--version"], { reject: false })).exitCode === 0;

describe("TERM=dumb gets no control codes", () => {
  const status = `"${process.execPath}" --input-type=module -e 'const { createOutput } = await import(${JSON.stringify(path.join(repoRoot, "dist/ui/output.js"))}); const o = createOutput(); o.status("step 1"); o.status("step 2"); o.info("done");'`;

  it.skipIf(!hasScript)("status lines on a terminal redraw in place, and on TERM=dumb are plain lines", async () => {
    // The same code on a capable terminal does redraw: the test would see it.
    expect(await onTerminal(status, "xterm")).toContain("\r\x1b[2K");
    const dumb = await onTerminal(status, "dumb");
    expect(dumb).not.toContain("\x1b");
    expect(dumb.replace(/\r/g, "").trimEnd()).toBe("step 1\nstep 2\ndone");
  });

  it.skipIf(!hasScript)("pibake flash's progress on TERM=dumb", async () => {
    const image = path.join(tmp.dir, "zero.img");
    await fsp.writeFile(image, minimalMbr());
    await fsp.truncate(image, 128 << 20);
    const text = await onTerminal(`"${process.execPath}" "${bin}" flash zero.img copy.img --no-bmap --no-verify`, "dumb", tmp.dir);
    expect(text).toContain("Done: copy.img holds the image.");
    expect(text).not.toContain("\x1b");
  });
});

describe("help", () => {
  const commands = ["render", "validate", "schema", "ca", "flash", "images", "check", "push", "build"];

  it.each(commands)("pibake %s --help says what the command does", async (name) => {
    const r = await pibake([name, "--help"]);
    expect(r.exitCode).toBe(0);
    const description = createCli().commands.find((c) => c.name === name)!.description;
    expect(r.stdout.split("\n\n")[1]).toBe(description);
    // cac's "(default: true)" on --no-verify read as if verifying were off.
    expect(r.stdout).not.toMatch(/\(default: (true|false)\)/);
    expect(r.stdout).not.toMatch(/ +$/m);
  });

  it("lists the actions of ca and images", async () => {
    const ca = await pibake(["ca", "--help"]);
    expect(ca.stdout).toMatch(/\nActions:\n {2}export {2}Write the CA certificate for clients.*\n {2}show {4}Print subject, SHA-256 fingerprint/);
    const images = await pibake(["images", "--help"]);
    expect(images.stdout).toMatch(/\nActions:\n {2}list {3}Show the cached official images.*\n {2}prune {2}Remove all but the newest/);
  });

  it("says flash's defaults in words", async () => {
    const r = await pibake(["flash", "--help"]);
    expect(r.stdout).toMatch(/--no-verify +Do not read the card back to compare it with the image \(by default it is read back and compared\)\n/);
    expect(r.stdout).toMatch(/--no-bmap +Ignore a \.bmap beside the image and write all of it \(by default a \.bmap beside the image is used\)\n/);
  });

  it.each(commands)("every example of pibake %s works as typed", async (name) => {
    const r = await pibake([name, "--help"]);
    const examples = r.stdout.split("Examples:\n")[1]?.trim().split("\n") ?? [];
    for (const example of examples) {
      const words = example
        .replace(/\s+#.*$/, "")
        .trim()
        .split(/\s+/);
      // Builds read the config's secrets from the environment, which plain sudo drops; flash needs none.
      if (words[0] === "sudo") expect(words.slice(0, 2), example).toEqual(name === "flash" ? ["sudo", "pibake"] : ["sudo", "-E"]);
      const argv = words[0] !== "sudo" ? words : words[1] === "-E" ? words.slice(2) : words.slice(1);
      expect(argv[0], example).toBe("pibake");
      const cli = createCli();
      cli.parse(["node", ...argv], { run: false });
      expect(cli.matchedCommand?.name, example).toBe(name);
      const command = cli.matchedCommand!;
      expect(() => (command.checkUnknownOptions(), command.checkOptionValue(), command.checkRequiredArgs(), command.checkUnusedArgs()), example).not.toThrow();
    }
  });
});

describe("a checkout that was not compiled", () => {
  it("says to run npm run build, without a stack trace", async () => {
    const root = path.join(tmp.dir, "checkout");
    await fsp.mkdir(path.join(root, "bin"), { recursive: true });
    await fsp.copyFile(bin, path.join(root, "bin", "pibake.js"));
    await fsp.copyFile(path.join(repoRoot, "package.json"), path.join(root, "package.json"));
    const r = await execa(process.execPath, [path.join(root, "bin", "pibake.js"), "--version"], { reject: false, stdin: "ignore" });
    expect(r.exitCode).toBe(1);
    expect(oneLine(r.stderr)).toBe(`pibake: pibake is not compiled (${root}/dist/cli.js is missing): run npm run build in ${root}/`);
  });

  it("says to run npm ci when a package is missing", async () => {
    const root = path.join(tmp.dir, "uninstalled");
    await fsp.mkdir(path.join(root, "bin"), { recursive: true });
    await fsp.copyFile(bin, path.join(root, "bin", "pibake.js"));
    await fsp.copyFile(path.join(repoRoot, "package.json"), path.join(root, "package.json"));
    await fsp.cp(path.join(repoRoot, "dist"), path.join(root, "dist"), { recursive: true });
    const r = await execa(process.execPath, [path.join(root, "bin", "pibake.js"), "--version"], { reject: false, stdin: "ignore", cwd: root });
    expect(r.exitCode).toBe(1);
    expect(oneLine(r.stderr)).toBe(`pibake: cac, which pibake needs, is not installed: run npm ci in ${root}/, then npm run build`);
  });
});
