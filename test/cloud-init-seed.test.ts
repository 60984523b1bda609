import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { FIXTURE_TIMEOUT_MS, repoRoot, tempDir } from "./helpers/cli.js";
import { removeAllFixtures, renderFixture, type Fixture } from "./helpers/render-fixture.js";
import { runStage } from "../src/engines/stage-runner.js";

/**
 * What the image's own cloud-init says about a pibake image's first boot,
 * without booting one: Debian's cloud-init (25.1 on trixie, as the images
 * carry it) runs its four boot stages in a chroot (scripts/fixtures/cloud-init-rootfs.sh,
 * this machine's architecture, cached outside the repository) on the NoCloud
 * seed at /boot/firmware, with Raspberry Pi's drop-in as the trixie stand-in
 * reimplements it and pibake's own, then `cloud-init status` is read whole:
 * its exit code, `extended_status` and `recoverable_errors`, not only
 * `status` and `errors`, which say "done" and [] for a degraded boot too.
 *
 * The seed (test/fixtures/raspios-seed) has the shape of pi-gen's
 * stage2/04-cloud-init files: a user-data of "#cloud-config" and comments
 * only, which cloud-init rejects as an "empty cloud config".
 */
const isRoot = process.getuid?.() === 0;
const SEED = path.join(repoRoot, "test/fixtures/raspios-seed");
const EMPTY_CLOUD_CONFIG = "Failed at merging in cloud config part from part-001: empty cloud config";

/** cloud-init's boot stages, in the order systemd runs them at a first boot. */
const STAGES = [["init", "--local"], ["init"], ["modules", "--mode", "config"], ["modules", "--mode", "final"]];
const CHROOT_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C.UTF-8", HOME: "/root" };

interface CloudInitStatus {
  exitCode: number;
  status: string;
  extended_status: string;
  errors: string[];
  recoverable_errors: Record<string, string[]>;
  /** What the stages printed, for a failure's message. */
  log: string;
}

/** Raspberry Pi's drop-in as the trixie stand-in writes it, read from its script so that the two cannot drift apart. */
function standInDropIn(): string {
  const script = readFileSync(path.join(repoRoot, "scripts/fixtures/base-image.sh"), "utf8");
  const found = /cat >"\$root\/etc\/cloud\/cloud\.cfg\.d\/99_raspberry-pi\.cfg" <<'EOF'\n([\s\S]*?\n)EOF\n/.exec(script);
  if (!found) throw new Error("scripts/fixtures/base-image.sh no longer writes 99_raspberry-pi.cfg from a here-document: update this test");
  return found[1]!;
}

describe.skipIf(!isRoot)("cloud-init's first boot on the seed a trixie image carries", () => {
  const tmp = tempDir("pibake-cloud-init-");
  let fixtureTar = "";
  let fx: Fixture;

  beforeAll(async () => {
    const fixture = await execa("bash", [path.join(repoRoot, "scripts/fixtures/cloud-init-rootfs.sh"), "trixie"], { timeout: FIXTURE_TIMEOUT_MS });
    fixtureTar = fixture.stdout.trim();
    fx = await renderFixture();
  }, FIXTURE_TIMEOUT_MS + 60_000);

  afterAll(() => {
    tmp.cleanup();
    removeAllFixtures();
  });

  /** A fresh root with cloud-init installed and never run, the seed on its boot partition, both drop-ins. */
  async function imageRoot(name: string): Promise<string> {
    const root = path.join(tmp.dir, name);
    mkdirSync(root);
    await execa("tar", ["--numeric-owner", "-xpf", fixtureTar, "-C", root]);
    mkdirSync(path.join(root, "boot/firmware"), { recursive: true });
    for (const f of readdirSync(SEED)) copyFileSync(path.join(SEED, f), path.join(root, "boot/firmware", f));
    const dropIns = path.join(root, "etc/cloud/cloud.cfg.d");
    writeFileSync(path.join(dropIns, "99_raspberry-pi.cfg"), standInDropIn());
    writeFileSync(path.join(dropIns, "99_zz-pibake.cfg"), fx.overlayFile("etc/cloud/cloud.cfg.d/99_zz-pibake.cfg"));
    // The chroot's own: its root is no device, so growing the root file system has nothing to find (a Pi's is ext4 on the card).
    writeFileSync(path.join(dropIns, "90_test-chroot.cfg"), "# A chroot for a test: no root device to grow.\nresize_rootfs: false\n");
    return root;
  }

  /** The step of pibake's stage that writes to the boot partition, run as a build runs it (the stage runner, on_chroot). */
  async function applyPibakeStep(root: string): Promise<void> {
    const stageDir = path.join(tmp.dir, `stage-${path.basename(root)}`);
    for (const f of fx.rendered.stage.filter((s) => s.path === "02-first-boot/01-run.sh" || s.path.startsWith("02-first-boot/files/"))) {
      mkdirSync(path.dirname(path.join(stageDir, f.path)), { recursive: true });
      writeFileSync(path.join(stageDir, f.path), f.content, { mode: f.mode });
    }
    await runStage({ stageDir, rootfs: root });
  }

  /**
   * The four stages, each in namespaces of its own (the chroot must not rename this
   * host, bring its network up or down, or see its processes), then the status.
   */
  async function firstBoot(root: string): Promise<CloudInitStatus> {
    let log = "";
    for (const stage of STAGES) {
      const r = await execa(
        "unshare",
        ["--uts", "--net", "--ipc", "--pid", "--fork", `--mount-proc=${path.join(root, "proc")}`, "chroot", root, "cloud-init", ...stage],
        {
          reject: false,
          all: true,
          timeout: 120_000,
          env: CHROOT_ENV,
          extendEnv: false,
        },
      );
      log += `$ cloud-init ${stage.join(" ")} (exit ${r.exitCode})\n${r.all}\n`;
    }
    const status = await execa("chroot", [root, "cloud-init", "status", "--format", "json"], {
      reject: false,
      timeout: 60_000,
      env: CHROOT_ENV,
      extendEnv: false,
    });
    log += `$ cloud-init status --format json (exit ${status.exitCode})\n${status.stdout}${status.stderr}\n`;
    return { ...(JSON.parse(status.stdout) as Omit<CloudInitStatus, "exitCode" | "log">), exitCode: status.exitCode ?? -1, log };
  }

  /** The cloud-init line of the report pibake-status writes to the card (status.sh), run in the chroot. */
  async function reportLine(root: string): Promise<string> {
    const script = fx.overlayText("usr/local/lib/pibake/status.sh");
    const bounded = /^bounded\(\) \{.*\}$/m.exec(script)?.[0];
    const line = script.split("\n").find((l) => l.includes('echo "  cloud-init: '));
    if (!bounded || !line) throw new Error("status.sh no longer has bounded() and a cloud-init line: update this test");
    const r = await execa("chroot", [root, "bash", "-c", `${bounded}\n${line}`], { timeout: 60_000, env: CHROOT_ENV, extendEnv: false });
    return r.stdout;
  }

  it("reports the image's comments-only user-data as an error: a degraded first boot, exit 2 (what a pibake image must not show)", async () => {
    const root = await imageRoot("as-shipped");
    const result = await firstBoot(root);
    expect(result.log).toMatch(/DataSourceNoCloud \[seed=ds_config_seedfrom,file:\/\/\/boot\/firmware\]/);
    // "status" and "errors" alone read as a clean boot: that is how the boot test missed it.
    expect({ status: result.status, errors: result.errors }, result.log).toEqual({ status: "done", errors: [] });
    expect({ exitCode: result.exitCode, extended: result.extended_status }, result.log).toEqual({ exitCode: 2, extended: "degraded done" });
    expect(result.recoverable_errors.WARNING ?? [], result.log).toContain(EMPTY_CLOUD_CONFIG);
    // The report on the card says so.
    expect(await reportLine(root)).toBe("  cloud-init: degraded done");
  }, 600_000);

  it("finishes without errors or warnings once pibake's stage has written its user-data: status done, exit 0", async () => {
    const root = await imageRoot("built");
    await applyPibakeStep(root);
    const userData = readFileSync(path.join(root, "boot/firmware/user-data"), "utf8");
    expect(userData).toBe(fx.stageText("02-first-boot/files/user-data"));
    expect(userData).toMatch(/^#cloud-config\n/);
    const result = await firstBoot(root);
    expect(result.log).toMatch(/DataSourceNoCloud \[seed=ds_config_seedfrom,file:\/\/\/boot\/firmware\]/);
    expect(
      { exitCode: result.exitCode, status: result.status, extended: result.extended_status, errors: result.errors, recoverable: result.recoverable_errors },
      result.log,
    ).toEqual({ exitCode: 0, status: "done", extended: "done", errors: [], recoverable: {} });
    expect(await reportLine(root)).toBe("  cloud-init: done");
    // And pibake's drop-in still has its way: no default user "pi".
    expect(readFileSync(path.join(root, "etc/passwd"), "utf8")).not.toMatch(/^pi:/m);
  }, 600_000);
});
