/**
 * tls.mode "acme" with the Pi's own programs: the rendered acme-certificate.sh runs Debian's arm64
 * lego, which runs freemyip-txt.sh and through it the arm64 curl, in the root filesystem of an
 * image pibake built (test/helpers/pibake-image.ts's cached one, which test/fast-regen.test.ts
 * uses too) under qemu-user, and the arm64 mosquitto there serves what it installed. That image is
 * tls.mode "own-ca": its root partition is mounted read-only under an overlay in this test's
 * temporary directory (the cached file is never written), and what it lacks of the stage's
 * packages for ACME (lego) is installed there by the image's apt-get from Debian's mirror, as the
 * stage would. The CA, its DNS server and the freemyip stand-in are test/acme.test.ts's
 * (test/helpers/acme-lab.ts), in a network namespace of this test's own that the chroot's
 * programs run in too (test/helpers/arm64-chroot.sh gives them /proc and /dev there).
 *
 * test/acme.test.ts covers the scripts' behaviour (renewal, back-off, causes) with the host's
 * amd64 builds; this file proves the same first issuance with the builds the image carries.
 */
import { execa } from "execa";
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { binfmtProblem, parseBinfmtEntry } from "../src/engines/binfmt.js";
import { stagePackages } from "../src/render/stage.js";
import { releaseBelow } from "../src/host/release.js";
import { AcmeLab, acmeConfig, acmeEnv, DOMAIN, fingerprint, LAB_TOOLS, run, Server, waitFor } from "./helpers/acme-lab.js";
import { FIXTURE_TIMEOUT_MS } from "./helpers/cli.js";
import { mountRoot } from "./helpers/image.js";
import { pibakeImage } from "./helpers/pibake-image.js";
import { removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";

const CHROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), "helpers", "arm64-chroot.sh");
/** The stage's packages that the ACME pieces run (each checked against the rendered stage). */
const ACME_PACKAGES = ["ca-certificates", "curl", "lego", "mosquitto", "mosquitto-clients", "openssl"];
const TOOLS = [...LAB_TOOLS, "unshare", "chroot", "losetup", "mount"];
/** ELF e_machine of AArch64. */
const EM_AARCH64 = 183;

async function whyNot(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "needs root (network and mount namespaces, loop devices, overlayfs, chroot)";
  const binfmt = binfmtProblem("arm64");
  if (binfmt) return binfmt;
  if (process.arch === "arm64") return "this host is arm64: test/acme.test.ts already runs the arm64 builds";
  const absent: string[] = [];
  for (const t of TOOLS) if ((await execa("sh", ["-c", `command -v ${t}`], { reject: false })).exitCode !== 0) absent.push(t);
  if (absent.length)
    return `not installed: ${absent.join(", ")} (CI installs pebble, openssl, curl, util-linux, coreutils, qemu-user-static, binfmt-support, iproute2)`;
  return undefined;
}
const skip = await whyNot();

/** e_machine of an ELF file, or undefined when it is not a 64-bit little-endian ELF file. */
function elfMachine(file: string): number | undefined {
  const head = Buffer.alloc(20);
  const fd = openSync(file, "r");
  try {
    readSync(fd, head, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return undefined;
  return head.readUInt16LE(18);
}

describe.skipIf(skip !== undefined)(
  `tls.mode "acme" with the image's arm64 lego, curl, openssl and mosquitto under qemu-user${skip ? ` (skipped: ${skip})` : ""}`,
  () => {
    const work = tempDir("pibake-acme64-");
    const rootfs = path.join(work, "rootfs");
    /** The image's root partition, read-only; the overlay's upper and work directories. */
    const lower = path.join(work, "lower");
    const upper = path.join(work, "upper");
    const overlayWork = path.join(work, "overlay-work");
    let image: Awaited<ReturnType<typeof mountRoot>> | undefined;
    let lab: AcmeLab;
    let fx: Fixture;
    let broker: Server;
    let mosquitto: { uid: number; gid: number };
    /** pebble's root, where the chroot's clients find it. */
    const PEBBLE_ROOT = "/root/pebble-root.crt";

    /** A command in the arm64 root filesystem: in this host's network namespace, then in the lab's. */
    const inChroot = (cmd: string[]) => ["unshare", "--mount", "--", "bash", CHROOT, rootfs, ...cmd];
    const onPi = (cmd: string[]) => lab.inNs(inChroot(cmd));
    const renew = (args: string[] = []) => run(onPi(["/usr/local/lib/pibake/acme-certificate.sh", ...args]), acmeEnv(), 110_000);
    const lego = (f: string) => path.join(rootfs, "var/lib/pibake/acme/lego/certificates", f);
    const served = () => lab.served();
    const idIn = (file: string, name: string) =>
      Number(
        readFileSync(path.join(rootfs, file), "utf8")
          .split("\n")
          .find((l) => l.startsWith(`${name}:`))!
          .split(":")[2],
      );

    beforeAll(async () => {
      fx = await renderFixture({ config: acmeConfig() });
      const stage = stagePackages(fx.rendered);
      for (const p of ACME_PACKAGES) expect(stage, `the stage installs ${p}`).toContain(p);

      const t0 = Date.now();
      const built = await pibakeImage();
      image = await mountRoot(built.image, lower);
      for (const d of [upper, overlayWork, rootfs]) mkdirSync(d);
      await execa("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${lower},upperdir=${upper},workdir=${overlayWork}`, rootfs]);
      console.log(`acme-arm64: the built image's root filesystem under an overlay in ${Date.now() - t0} ms (${built.image})`);

      // What the image lacks of the stage's packages for "acme", installed as the stage would, with
      // this host's name servers (outside the lab's namespace, which has no way out).
      const dpkg = await run(inChroot(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n"]));
      expect(dpkg.exitCode, dpkg.output).toBe(0);
      const installed = new Set(
        dpkg.output
          .split("\n")
          .filter((l) => / ii ?$/.test(l))
          .map((l) => l.split(" ")[0]),
      );
      const missing = ACME_PACKAGES.filter((p) => !installed.has(p));
      expect(missing, "the own-ca image lacks the ACME client").toContain("lego");
      writeFileSync(path.join(rootfs, "etc/resolv.conf"), readFileSync("/etc/resolv.conf"));
      const apt = (args: string[]) => run(inChroot(["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y", ...args]), {}, 900_000);
      const installArgs = ["install", "--no-install-recommends", ...missing];
      // The image's package lists are its build's: fresh on a new CI machine. Only when the mirror
      // has moved on since (a cached image's 404s) are they updated, which takes a minute here.
      let install = await apt(installArgs);
      let how = "from the image's package lists";
      if (install.exitCode !== 0) {
        const update = await apt(["update"]);
        expect(update.exitCode, update.output).toBe(0);
        const first = install.ms;
        install = await apt(installArgs);
        how = `after a failed try (${first} ms) and apt-get update (${update.ms} ms)`;
      }
      expect(install.exitCode, install.output).toBe(0);
      console.log(`acme-arm64: apt-get install --no-install-recommends ${missing.join(" ")} under qemu-user in ${install.ms} ms, ${how}`);
      // The own CA's certificate and key are not in an "acme" image.
      const certs = path.join(rootfs, "etc/mosquitto/certs");
      for (const f of readdirSync(certs)) if (f !== "README") rmSync(path.join(certs, f));
      // The ids of the image's mosquitto user, not this host's.
      mosquitto = { uid: idIn("etc/passwd", "mosquitto"), gid: idIn("etc/group", "mosquitto") };

      lab = new AcmeLab(`pibake-acme64-${process.pid}`, work, fx.clear.ddns!);
      await lab.start();
      lab.layOutPi(fx, rootfs, mosquitto);
      copyFileSync(lab.pebbleRoot, path.join(rootfs, PEBBLE_ROOT));

      // The boot: mosquitto's ExecStartPre, then the arm64 mosquitto with the rendered config.
      const prepared = await run(onPi(["/usr/local/lib/pibake/acme-certificate.sh", "--prepare"]));
      expect(prepared.exitCode, prepared.output).toBe(0);
      broker = new Server("mosquitto", onPi(["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]));
      lab.servers.push(broker);
      await waitFor(
        "mosquitto",
        () => broker.output.includes(" running"),
        60_000,
        () => broker.output,
      );
    }, FIXTURE_TIMEOUT_MS + 2_100_000);

    afterAll(async () => {
      await lab?.stop();
      // Whatever still runs in the chroot, the overlay and the image's root, then its loop device.
      await releaseBelow(work);
      await image?.release();
      fx?.cleanup();
      removeAllFixtures();
    });

    it("the programs are the image's arm64 builds, and mosquitto runs through qemu-user", () => {
      for (const p of ["usr/bin/lego", "usr/bin/curl", "usr/bin/openssl", "usr/sbin/mosquitto", "usr/bin/mosquitto_pub", "usr/bin/bash"]) {
        expect({ p, machine: elfMachine(realpathSync(path.join(rootfs, p))) }).toEqual({ p, machine: EM_AARCH64 });
      }
      const pid = readFileSync(path.join(rootfs, "run/mosquitto/mosquitto.pid"), "utf8").trim();
      const entry = parseBinfmtEntry("qemu-aarch64", readFileSync("/proc/sys/fs/binfmt_misc/qemu-aarch64", "utf8"));
      expect(readlinkSync(`/proc/${pid}/exe`)).toBe(realpathSync(entry.interpreter!));
    });

    it("the arm64 lego obtains a certificate from pebble through freemyip, installs it with mosquitto's owner and mode, and the arm64 mosquitto serves it", async () => {
      const before = lab.requests.length;
      const r = await renew();
      expect(r.exitCode, r.output).toBe(0);
      const updates = lab.requests.slice(before).filter((q) => q.path === "/update");
      expect(updates.map((q) => [q.domain, q.tokenOk, q.txt === "null" ? "removed" : typeof q.txt])).toEqual([
        [`_acme-challenge.${DOMAIN}`, true, "string"],
        [`_acme-challenge.${DOMAIN}`, true, "removed"],
      ]);
      expect(r.output).not.toContain(fx.clear.ddns!);
      // trixie's OpenSSL 3.5 prints the issuer as "CN=…" (bookworm's 3.0, on a bookworm host, "CN = …").
      expect(r.output).toContain(`installed the certificate for ${DOMAIN} from CN=Pebble Intermediate CA`);
      expect(r.output).toMatch(/mosquitto \(pid \d+\) told to reload its certificates/);
      await waitFor(
        "mosquitto's reload",
        () => broker.output.includes("Reloading config"),
        20_000,
        () => broker.output,
      );

      const certs = path.join(rootfs, "etc/mosquitto/certs");
      const key = statSync(path.join(certs, "public.key"));
      expect([key.mode & 0o777, key.uid, key.gid]).toEqual([0o600, mosquitto.uid, mosquitto.gid]);
      const crt = statSync(path.join(certs, "public.crt"));
      expect([crt.mode & 0o777, crt.uid]).toEqual([0o644, 0]);
      expect(statSync(path.join(rootfs, "var/lib/pibake/acme")).mode & 0o777).toBe(0o700);

      // The arm64 openssl verifies lego's certificate against pebble's root alone.
      const leaf = `/var/lib/pibake/acme/lego/certificates/${DOMAIN}.crt`;
      const verify = await run(
        onPi([
          "openssl",
          "verify",
          "-CAfile",
          PEBBLE_ROOT,
          "-untrusted",
          `/var/lib/pibake/acme/lego/certificates/${DOMAIN}.issuer.crt`,
          "-verify_hostname",
          DOMAIN,
          leaf,
        ]),
      );
      expect(verify.exitCode, verify.output).toBe(0);
      expect(verify.output).toContain(`${leaf}: OK`);
      // What the broker serves is that certificate, and the arm64 mosquitto_pub, trusting only pebble's root and checking the name, gets through.
      expect(await fingerprint(await served())).toBe(await fingerprint(readFileSync(lego(`${DOMAIN}.crt`), "utf8")));
      const pub = await run(
        onPi([
          "mosquitto_pub",
          "-h",
          DOMAIN,
          "-p",
          "8883",
          "--cafile",
          PEBBLE_ROOT,
          "-u",
          "hub",
          "-P",
          fx.clear.mqtt.hub!,
          "-t",
          "home/acme",
          "-m",
          "arm64",
          "-q",
          "1",
        ]),
        {},
        30_000,
      );
      expect(pub.exitCode, pub.output).toBe(0);
      console.log(
        `acme-arm64: obtained and served in ${r.ms} ms under qemu-user (account registration, DNS-01 through the stand-in, issuance, install, SIGHUP)`,
      );
    });

    it("a second run, long before the renewal window, does nothing", async () => {
      const before = lab.requests.length;
      const r = await renew();
      expect(r.exitCode, r.output).toBe(0);
      expect(r.output).toMatch(new RegExp(`nothing to do: the certificate for ${DOMAIN.replaceAll(".", "\\.")} is valid until \\S+; renewal from \\S+`));
      expect(lab.requests.length).toBe(before);
    });
  },
);
