import { describe, expect, it, afterAll, beforeAll } from "vitest";
import { execa } from "execa";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pibake, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { systemSettings } from "../src/render/system.js";
import { Tail } from "../src/host/process.js";
import { baseDigest, decideReuse, parseDepends, piGenBranch, piGenConfigFile, stageList } from "../src/engines/pigen/plan.js";
import { estimateRemaining, parseLine, PiGenProgress } from "../src/engines/pigen/log.js";
import { diskProblem, missingDependencies, PIGEN_HEADING, rootProblem } from "../src/engines/pigen/preflight.js";
import { formatProblems } from "../src/engines/problems.js";
import { placeStages, prepareTree, useCheckout } from "../src/engines/pigen/checkout.js";
import { timingsSummary } from "../src/engines/pigen/build.js";
import { loadConfig } from "../src/config/load.js";
import { prepareSecrets, StateDir } from "../src/secrets/index.js";
import { render } from "../src/render/index.js";

describe("pi-gen branch", () => {
  it.each([
    ["trixie", "arm64", "arm64"],
    ["trixie", "armhf", "master"],
    ["bookworm", "arm64", "bookworm-arm64"],
    ["bookworm", "armhf", "bookworm"],
  ] as const)("%s/%s builds from %s", (release, arch, branch) => {
    expect(piGenBranch(release, arch)).toBe(branch);
  });
});

describe("the config pibake hands to build.sh", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);

  it("is the rendered config with the engine's overrides, and bash reads every value back intact", async () => {
    const c = validConfig();
    c.image.keyboard = { keymap: "gb", layout: "English (UK)" };
    const cfg = writeJson(path.join(tmp.dir, "c.json"), c);
    const { model } = loadConfig(cfg, { ...secretEnv });
    const secrets = await prepareSecrets(model, new StateDir(path.join(tmp.dir, "state")));
    const rendered = await render(model, secrets);
    const file = path.join(tmp.dir, "pibake.config");
    writeFileSync(
      file,
      piGenConfigFile(rendered.piGenConfig, {
        stageList: stageList(["/x/my base"]),
        gitHash: "abc123",
        workDir: "/cache/work/my broker",
        deployDir: "/cache/deploy",
      }),
    );
    const names = [
      "IMG_NAME",
      "RELEASE",
      "FIRST_USER_NAME",
      "FIRST_USER_PASS",
      "KEYBOARD_LAYOUT",
      "STAGE_LIST",
      "GIT_HASH",
      "WORK_DIR",
      "DEPLOY_DIR",
      "PUBKEY_ONLY_SSH",
      "DEPLOY_COMPRESSION",
    ];
    const r = await execa("bash", ["-uc", `source "$1"; for v in ${names.join(" ")}; do printf '%s=%s\\0' "$v" "\${!v}"; done`, "bash", file], {
      env: {},
      extendEnv: false,
    });
    const values = Object.fromEntries(
      r.stdout
        .split("\0")
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
    );
    expect(values).toEqual({
      IMG_NAME: "test-broker",
      RELEASE: "trixie",
      FIRST_USER_NAME: "admin",
      FIRST_USER_PASS: secrets.piGenFirstUserPlaceholder,
      KEYBOARD_LAYOUT: "English (UK)",
      STAGE_LIST: "stage-base0 stage-pibake",
      GIT_HASH: "abc123",
      WORK_DIR: "/cache/work/my broker",
      DEPLOY_DIR: "/cache/deploy",
      PUBKEY_ONLY_SSH: "1",
      DEPLOY_COMPRESSION: "none",
    });
    // The real password is not in pi-gen's config at all.
    expect(readFileSync(file, "utf8")).not.toContain(secretEnv.T_USER_PW);
    expect(secrets.piGenFirstUserPlaceholder).toMatch(/^[A-Za-z0-9_-]{20,}$/);
  });
});

describe("reusing stage0-2", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);
  const modelFor = (mutate: (c: Record<string, any>) => void) => {
    const c = validConfig();
    mutate(c);
    return loadConfig(writeJson(path.join(tmp.dir, `${Math.random()}.json`), c), { ...secretEnv }).model;
  };
  const systemOf = (mutate: (c: Record<string, any>) => void) => systemSettings(modelFor(mutate));
  const base = baseDigest(
    systemOf(() => {}),
    "commit1",
    "",
    "ph",
  );

  it("does not depend on the domain, certificates, MQTT users, ddclient or the user's password", () => {
    const other = modelFor((c) => {
      c.tls.domain = "other.freemyip.com";
      c.mqtt.users[0].name = "renamed";
      c.ddns.interval = 900;
      c.user.password = { env: "T_MQTT_PHONE_PW" };
    });
    expect(baseDigest(systemSettings(other), "commit1", "", "ph")).toBe(base);
  });

  it.each([
    ["the pi-gen commit", (m: any) => baseDigest(systemSettings(m), "commit2", "", "ph")],
    [
      "the user's name",
      (m: any) =>
        baseDigest(
          systemOf((c) => (c.user.name = "pi")),
          "commit1",
          "",
          "ph",
        ),
    ],
    [
      "the time zone",
      () =>
        baseDigest(
          systemOf((c) => (c.image.timezone = "Europe/London")),
          "commit1",
          "",
          "ph",
        ),
    ],
    [
      "the SSH keys",
      () =>
        baseDigest(
          systemOf((c) => (c.user.passwordSsh = true)),
          "commit1",
          "",
          "ph",
        ),
    ],
    ["the base stages", (m: any) => baseDigest(systemSettings(m), "commit1", "digest-of-my-stages", "ph")],
  ])("changes with %s", (_what, digestOf) => {
    expect(digestOf(modelFor(() => {}))).not.toBe(base);
  });

  it.each([
    [{ clean: true, recordedDigest: "a", currentDigest: "a", baseRootfsIntact: true }, false, /--clean/],
    [{ clean: false, currentDigest: "a", baseRootfsIntact: true }, false, /no earlier build/],
    [{ clean: false, recordedDigest: "b", currentDigest: "a", baseRootfsIntact: true }, false, /inputs changed/],
    [{ clean: false, recordedDigest: "a", currentDigest: "a", baseRootfsIntact: false }, false, /missing or incomplete/],
    [{ clean: false, recordedDigest: "a", currentDigest: "a", baseRootfsIntact: true }, true, /stage0-2 are reused/],
  ])("decides %j → reuse %s", (facts, reuse, reason) => {
    const d = decideReuse(facts);
    expect(d.reuse).toBe(reuse);
    expect(d.reason).toMatch(reason);
  });
});

describe("pi-gen's log", () => {
  // Lines as pi-gen's `log` function writes them: date +"[%T] $*".
  const lines = [
    "[10:00:00] Begin /pi-gen/stage0",
    "[10:00:00] Begin /pi-gen/stage0/prerun.sh",
    "I: Retrieving InRelease",
    "[10:01:00] End /pi-gen/stage0/prerun.sh",
    "[10:01:00] Begin /pi-gen/stage0/00-configure-apt",
    "[10:01:00] Begin /pi-gen/stage0/00-configure-apt/00-run.sh",
    "[10:01:05] End /pi-gen/stage0/00-configure-apt/00-run.sh",
    "[10:01:05] End /pi-gen/stage0/00-configure-apt",
    "[10:02:00] End /pi-gen/stage0",
    "[10:02:00] Begin /pi-gen/stage-pibake",
    "[10:02:00] Begin /pi-gen/stage-pibake/00-broker",
    "[10:02:01] Begin /pi-gen/stage-pibake/00-broker/02-run-chroot.sh",
    "usermod: user 'admin' does not exist",
    "[10:02:02] Build failed",
  ];

  it("parses Begin/End lines into stage, sub-stage and script", () => {
    expect(parseLine(lines[5]!)).toEqual({
      kind: "begin",
      path: "/pi-gen/stage0/00-configure-apt/00-run.sh",
      stage: "stage0",
      subStage: "00-configure-apt",
      step: "00-run.sh",
    });
    expect(parseLine(lines[0]!)).toEqual({ kind: "begin", path: "/pi-gen/stage0", stage: "stage0" });
    expect(parseLine(lines[2]!)).toBeUndefined();
    expect(parseLine(lines[13]!)).toEqual({ kind: "failed" });
  });

  it("follows where the build is and names the script that failed", () => {
    let t = 0;
    const p = new PiGenProgress(() => t);
    for (const l of lines) {
      p.feed(l);
      t += 1000;
    }
    expect(p.failedStep()).toBe("stage-pibake › 00-broker › 02-run-chroot.sh");
    expect(p.stageDurations.stage0).toBe(8000);
    // The runner's tail keeps the last lines: what the failure message quotes.
    const tail = new Tail(3);
    for (const l of lines) tail.push(l);
    expect(tail.lines.at(-2)).toBe("usermod: user 'admin' does not exist");
  });

  it("sums up the last full build and the last regeneration side by side", () => {
    const run = (ms: number) => ({ stages: {}, totalMs: ms, finishedAt: "2026-11-20T10:00:00.000Z" });
    expect(timingsSummary({ full: run(2_470_000), regeneration: run(362_000) }, "regeneration")).toBe(
      "pi-gen: full build 41m10s (2026-11-20), regeneration 6m02s (this build)",
    );
    expect(timingsSummary({ full: run(2_470_000) }, "full")).toBe(
      "pi-gen: full build 41m10s (this build), regeneration not yet (the next build with unchanged base inputs)",
    );
  });

  it("estimates what is left from the last build", () => {
    expect(estimateRemaining(undefined, ["stage0"], {})).toBeUndefined();
    expect(estimateRemaining({ stage0: 60_000, "stage-pibake": 30_000 }, ["stage0", "stage-pibake"], { stage0: 55_000 }, "stage-pibake", 10_000)).toBe(20_000);
  });

  it.skipIf(!process.env.PIBAKE_PIGEN_DIR)("reads lines written by pi-gen's own log function (PIBAKE_PIGEN_DIR)", async () => {
    const dir = process.env.PIBAKE_PIGEN_DIR!;
    const r = await execa("bash", ["-c", `LOG_FILE=/dev/null; source "${dir}/scripts/common"; log "Begin /pi-gen/stage2/01-sys-tweaks/01-run.sh"`]);
    expect(parseLine(r.stdout)).toMatchObject({ kind: "begin", stage: "stage2", subStage: "01-sys-tweaks", step: "01-run.sh" });
  });
});

describe("pre-flight checks", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);

  it("lists problems with their fixes, indenting messages that carry their own", () => {
    // The binfmt_misc check itself is shared with the base-image engine and tested there.
    const text = formatProblems(
      [{ what: "binfmt_misc is not mounted. Fix:\n  sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc" }, rootProblem(1000)!],
      PIGEN_HEADING,
    );
    expect(text).toBe(
      "pi-gen cannot build here yet:\n" +
        "  - binfmt_misc is not mounted. Fix:\n      sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc\n" +
        "  - pi-gen's native build must run as root (it mounts file systems and uses loop devices)\n    fix: run pibake with sudo -E (-E keeps the environment variables the config's secrets come from), or use --runner docker",
    );
  });

  it("says how much disk there is and how much is needed", () => {
    const p = diskProblem(tmp.dir, 1024 ** 5);
    expect(p?.what).toMatch(/has [\d.]+ [GTM]iB free; a pi-gen build needs about 1\.0 PiB|1024\.0 TiB/);
    expect(diskProblem(tmp.dir, 1)).toBeUndefined();
  });

  it("prints the exact apt-get line for missing dependencies", async () => {
    const depends = path.join(tmp.dir, "depends");
    writeFileSync(depends, "# comment\nbash\nno-such-tool-pibake:pkg-one\nqemu-arm-nope:qemu-user-binfmt\nzzz-not-here\n");
    expect(parseDepends(readFileSync(depends, "utf8"))[1]).toEqual({ tool: "no-such-tool-pibake", pkg: "pkg-one" });
    const p = await missingDependencies(depends);
    expect(p?.fix).toBe("sudo apt-get install -y pkg-one qemu-user-binfmt zzz-not-here");
    expect(formatProblems([p!, rootProblem(1000)!], PIGEN_HEADING)).toMatch(
      /pi-gen cannot build here yet:\n  - pi-gen's dependencies[\s\S]*fix: run pibake with sudo -E \(-E keeps the environment variables the config's secrets come from\), or use --runner docker/,
    );
  });
});

describe("pibake's copy of the pi-gen tree", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);
  const repo = path.join(tmp.dir, "pi-gen");
  const git = (...args: string[]) => execa("git", ["-C", repo, ...args]);

  beforeAll(() =>
    fakePiGen(repo, {
      "build.sh": "#!/bin/bash -e\n",
      "stage0/prerun.sh": "#!/bin/bash -e\n",
      "stage1/prerun.sh": "#!/bin/bash -e\n",
      "stage2/prerun.sh": "#!/bin/bash -e\n",
    }),
  );

  it("refuses a checkout on the wrong branch and says which one is needed", async () => {
    await expect(useCheckout(repo, "bookworm-arm64")).rejects.toThrow(
      /is on branch arm64, but this config needs pi-gen's bookworm-arm64 branch: run git -C .* checkout bookworm-arm64/,
    );
  });

  it("copies the tracked files, places stage-pibake and the SKIP markers, and never edits the checkout", async () => {
    const checkout = await useCheckout(repo, "arm64");
    const tree = path.join(tmp.dir, "tree");
    await prepareTree(checkout, tree);
    const stageFiles = [{ path: "00-broker/01-run.sh", content: Buffer.from("#!/bin/bash -e\n"), mode: 0o755 }];
    placeStages(tree, { stageFiles, baseStageDirs: [], skipBase: true, baseStages: ["stage0", "stage1", "stage2"] });
    expect(existsSync(path.join(tree, "build.sh"))).toBe(true);
    expect(existsSync(path.join(tree, "stage-pibake/00-broker/01-run.sh"))).toBe(true);
    for (const s of ["stage0", "stage1", "stage2"]) {
      expect(existsSync(path.join(tree, s, "SKIP_IMAGES")), s).toBe(true);
      expect(existsSync(path.join(tree, s, "SKIP")), s).toBe(true);
    }
    // A full build next time: the SKIP markers go again.
    placeStages(tree, { stageFiles, baseStageDirs: [], skipBase: false, baseStages: ["stage0", "stage1", "stage2"] });
    expect(existsSync(path.join(tree, "stage2", "SKIP"))).toBe(false);
    expect((await git("status", "--porcelain")).stdout).toBe("");
  });

  it("says which step of the copy failed, with git's words", async () => {
    const checkout = { ...(await useCheckout(repo, "arm64")), commit: "0".repeat(40) };
    await expect(prepareTree(checkout, path.join(tmp.dir, "tree-bad"))).rejects.toThrow(
      new RegExp(`copying pi-gen's files at 0{40}: \`git -C \\S+ archive --format=tar 0{40}\` failed \\(exit \\d+\\): fatal: `),
    );
  });
});

describe("pibake build with pi-gen, before pi-gen starts", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);
  const repo = path.join(tmp.dir, "pi-gen");

  beforeAll(() =>
    fakePiGen(repo, {
      "build.sh": "#!/bin/bash\necho pi-gen must not run >&2\nexit 3\n",
      depends: "bash\nno-such-tool-pibake:pibake-missing-pkg\n",
    }),
  );

  it("checks what pi-gen needs and prints the fix, without starting it", async () => {
    const cfg = writeJson(path.join(tmp.dir, "c.json"), validConfig());
    const r = await pibake(
      ["build", cfg, "--pi-gen", repo, "--runner", "native", "--out", path.join(tmp.dir, "deploy"), "--state", path.join(tmp.dir, "state")],
      {
        env: { ...secretEnv, XDG_CACHE_HOME: path.join(tmp.dir, "cache") },
      },
    );
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/pi-gen cannot build here yet:/);
    expect(r.stderr).toMatch(/fix: sudo apt-get install -y pibake-missing-pkg/);
    expect(r.stderr).not.toMatch(/pi-gen must not run/);
    expect(existsSync(path.join(tmp.dir, "deploy")) ? readdirSync(path.join(tmp.dir, "deploy")).filter((f) => f.endsWith(".img")) : []).toEqual([]);
  });

  it("names a base stage in the config that is not a directory, before pi-gen starts", async () => {
    const c = validConfig();
    c.image.baseStages = ["no-such-base"];
    const cfg = writeJson(path.join(tmp.dir, "stages.json"), c);
    const r = await pibake(
      ["build", cfg, "--pi-gen", repo, "--runner", "native", "--out", path.join(tmp.dir, "deploy3"), "--state", path.join(tmp.dir, "state")],
      { env: { ...secretEnv } },
    );
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`image.baseStages[0]: ${path.join(tmp.dir, "no-such-base")} is not a directory`);
    expect(r.stderr).not.toMatch(/pi-gen must not run/);
  });

  it("names the branch a config needs when the checkout is on another", async () => {
    const c = validConfig();
    c.image.release = "bookworm";
    const cfg = writeJson(path.join(tmp.dir, "bookworm.json"), c);
    const r = await pibake(["build", cfg, "--pi-gen", repo, "--out", path.join(tmp.dir, "deploy2"), "--state", path.join(tmp.dir, "state")], {
      env: { ...secretEnv },
    });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/needs pi-gen's bookworm-arm64 branch/);
  });
});

/** A git checkout on pi-gen's arm64 branch holding just the given files (scripts executable). */
async function fakePiGen(repo: string, files: Record<string, string>): Promise<void> {
  const git = (...args: string[]) => execa("git", ["-C", repo, ...args]);
  mkdirSync(repo, { recursive: true });
  await git("init", "-q", "-b", "arm64");
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(repo, rel)), { recursive: true });
    writeFileSync(path.join(repo, rel), content, { mode: rel.endsWith(".sh") ? 0o755 : 0o644 });
  }
  await git("add", "-A");
  await git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init");
}

/**
 * The Docker runner's plumbing. No Docker engine runs on these machines, so
 * `docker` and pi-gen's `build-docker.sh` are stand-ins that record what
 * pibake hands them; the contract they follow is build-docker.sh's (its
 * environment variables, `-c`, the image copied to the tree's deploy/).
 */
describe("pibake build --runner docker (stand-ins for docker and build-docker.sh)", () => {
  const tmp = tempDir();
  afterAll(tmp.cleanup);
  const repo = path.join(tmp.dir, "pi-gen");
  const bin = path.join(tmp.dir, "bin");
  const record = path.join(tmp.dir, "record");
  const env = {
    ...secretEnv,
    PATH: `${bin}:${process.env.PATH}`,
    XDG_CACHE_HOME: path.join(tmp.dir, "cache"),
    FAKE_RECORD: record,
    FAKE_CONTAINER: path.join(tmp.dir, "container"),
  };

  beforeAll(async () => {
    await fakePiGen(repo, {
      "build.sh": "#!/bin/bash\necho the native build must not run >&2\nexit 3\n",
      "stage0/prerun.sh": "#!/bin/bash -e\n",
      "stage1/prerun.sh": "#!/bin/bash -e\n",
      "stage2/prerun.sh": "#!/bin/bash -e\n",
      // As build-docker.sh does: pi-gen's log on stdout, then the image copied out of the container into deploy/.
      "build-docker.sh": [
        "#!/bin/bash -e",
        'printf "%s\\n" "CONTAINER_NAME=$CONTAINER_NAME CONTINUE=$CONTINUE PRESERVE_CONTAINER=$PRESERVE_CONTAINER args=$*" >> "$FAKE_RECORD"',
        'echo "[10:00:00] Begin /pi-gen/stage-pibake"',
        'echo "[10:00:01] End /pi-gen/stage-pibake"',
        "mkdir -p deploy",
        'truncate -s 8M "deploy/$(date +%s%N)-test-broker.img"',
        'printf "pibake" | dd of="$(ls deploy/*.img | tail -n 1)" bs=1 seek=1048576 conv=notrunc status=none',
        "",
      ].join("\n"),
    });
    mkdirSync(bin);
    writeFileSync(
      path.join(bin, "docker"),
      [
        "#!/bin/bash",
        'echo "docker $*" >> "$FAKE_RECORD"',
        'case "$1" in',
        "  info) echo 27.0.0-stand-in ;;",
        '  ps) if [ -e "$FAKE_CONTAINER" ]; then echo 0123456789ab; fi ;;',
        "esac",
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    chmodSync(path.join(repo, "build-docker.sh"), 0o755);
  });

  const build = (out: string) =>
    pibake(
      [
        "build",
        writeJson(path.join(tmp.dir, "c.json"), validConfig()),
        "--pi-gen",
        repo,
        "--runner",
        "docker",
        "--out",
        out,
        "--state",
        path.join(tmp.dir, "state"),
        "--compress",
        "none",
      ],
      { env },
    );

  it("runs build-docker.sh with pibake's container name and config, and delivers the image it copied out", async () => {
    const r = await build(path.join(tmp.dir, "out1"));
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = readFileSync(record, "utf8").trim().split("\n");
    expect(lines.some((l) => l.startsWith("docker info"))).toBe(true);
    expect(lines.at(-1)).toMatch(/^CONTAINER_NAME=pibake_test-broker CONTINUE=0 PRESERVE_CONTAINER=0 args=-c \S+\/pibake\.config$/);
    const manifest = readdirSync(path.join(tmp.dir, "out1")).find((f) => f.endsWith(".manifest.json"))!;
    expect(JSON.parse(readFileSync(path.join(tmp.dir, "out1", manifest), "utf8")).engine).toMatchObject({
      engine: "pi-gen",
      runner: "docker",
      regeneration: false,
    });
  });

  it("continues a container an interrupted build left, and is not confused by the last build's image", async () => {
    writeFileSync(path.join(tmp.dir, "container"), "");
    // An image an earlier, failed build left in the tree's deploy/.
    writeFileSync(path.join(env.XDG_CACHE_HOME, "pibake/pi-gen-tree/arm64/deploy/2026-01-01-test-broker.img"), "stale");
    const r = await build(path.join(tmp.dir, "out2"));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(readFileSync(record, "utf8").trim().split("\n").at(-1)).toMatch(/^CONTAINER_NAME=pibake_test-broker CONTINUE=1 /);
  });
});
