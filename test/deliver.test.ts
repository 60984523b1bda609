import { describe, expect, it, beforeAll, afterAll } from "vitest";
import { execa } from "execa";
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { createBmap } from "../src/image/bmap.js";
import { probeImage } from "../src/image/compression.js";
import { configDigests } from "../src/secrets/digests.js";
import { buildFacts, deliveryBaseName } from "../src/build.js";
import { deliver, removeStaleTemps, sha256Line, type DeliverCompression } from "../src/image/deliver.js";
import { dataRanges, parseFilefrag, scanImage } from "../src/image/sparse.js";
import { summarize } from "../src/secrets/pki.js";
import { BuildLog } from "../src/host/log.js";
import { baseConfig, DEFAULT_SECRET_ENV, removeAllFixtures, renderFixture, tempDir, type Fixture } from "./helpers/render-fixture.js";

/**
 * Delivery, shared by both engines: the files in --out, their names, formats
 * that the standard tools accept (sha256sum -c, bmaptool copy, xz -t, zstd -t),
 * the manifest, atomic renames, and no secret in any delivered file.
 */
const MiB = 1024 * 1024;
let fx: Fixture;
let work: string;
let raw: string;

/** 64 MiB + 1536 bytes: data here and there, allocated zeros inside a data extent, holes, a partial last block. */
async function makeImage(file: string): Promise<void> {
  await execa("truncate", ["-s", String(64 * MiB + 1536), file]);
  const fd = openSync(file, "r+");
  const put = (pos: number, buf: Buffer) => writeSync(fd, buf, 0, buf.length, pos);
  put(0, Buffer.from("MBR-ish header".padEnd(512, "x")));
  put(4 * MiB, Buffer.alloc(3 * MiB, 0xab));
  put(7 * MiB, Buffer.alloc(64 * 1024, 0)); // written zeros: allocated but not mapped
  put(7 * MiB + 64 * 1024, Buffer.alloc(4096 * 3 + 100, 0x11));
  put(40 * MiB + 8192, Buffer.from("lonely block"));
  put(64 * MiB + 1000, Buffer.from("tail in a partial block"));
  closeSync(fd);
}

beforeAll(async () => {
  const config = baseConfig();
  config.nodeRed = { enabled: false };
  fx = await renderFixture({ config });
  work = tempDir("pibake-deliver-");
  raw = path.join(work, "raw.img");
  await makeImage(raw);
});
afterAll(() => removeAllFixtures());

function engineImage(name: string): string {
  const dir = path.join(work, name);
  mkdirSync(dir, { recursive: true });
  const img = path.join(dir, "image.img");
  copyFileSync(raw, img);
  return img;
}

function logFile(name: string): string {
  const log = new BuildLog(path.join(work, name, "build.log"));
  log.line("a line of the build");
  // A secret that reached the log by accident (a tool printed it) is redacted on the way in.
  log.line(`tool output: password=${fx.clear.mqtt.phone}`);
  return log.file;
}

const DATE = new Date(2026, 0, 2, 12, 0, 0);

/** What the build passes to delivery besides the image: names, facts and ca.crt from the config and secrets. */
function buildSide() {
  return {
    baseName: deliveryBaseName(fx.model, DATE),
    facts: buildFacts(fx.model, fx.secrets, fx.rendered, fx.state),
    extraFiles: [{ name: "ca.crt", content: fx.secrets.pki.caCertPem }],
  };
}

async function deliverAs(compress: DeliverCompression, name: string, extra: { signal?: AbortSignal } = {}) {
  const outDir = path.join(work, `out-${name}`);
  const result = { imagePath: engineImage(name), manifest: { engine: "test", facts: 1 }, timings: { engineStep: 5 } };
  const delivered = await deliver({
    result,
    ...buildSide(),
    outDir,
    compress,
    logPath: logFile(name),
    timings: { render: 7 },
    ...extra,
  });
  return { outDir, delivered, result };
}

describe("scanImage", () => {
  it("makes exactly the bmap createBmap makes and the image's sha256, reading only data extents", async () => {
    const ours = await scanImage(raw);
    const theirs = await createBmap(raw, { output: path.join(work, "theirs.bmap") });
    expect(ours.bmap).toEqual(theirs.bmap);
    expect(ours.sha256).toBe((await execa("sha256sum", [raw])).stdout.split(" ")[0]);
    const ranges = await dataRanges(raw, 64 * MiB + 1536);
    // filefrag found the extents: far less than the file is read.
    expect(ranges.reduce((n, r) => n + r.end - r.start, 0)).toBeLessThan(8 * MiB);
  });

  it("feeds every byte, holes as zeros, to a sink", async () => {
    const chunks: Buffer[] = [];
    await scanImage(raw, { sink: async (c) => void chunks.push(Buffer.from(c)) });
    expect(Buffer.concat(chunks).equals(readFileSync(raw))).toBe(true);
  });

  it("parses filefrag's extents, leaving out unwritten (preallocated) ones", () => {
    const text = [
      "Filesystem type is: ef53",
      "File size of zz.img is 10485760 (2560 blocks of 4096 bytes)",
      " ext:     logical_offset:        physical_offset: length:   expected: flags:",
      "   0:        0..     255:   22371584..  22371839:    256:             unwritten",
      "   1:     1024..    1279:   22371840..  22372095:    256:             ",
      "   2:     1280..    1281:   22381840..  22381841:      2:   22372096:",
      "   3:     2048..    2048:   22384640..  22384640:      1:   22372864: last,eof",
      "zz.img: 3 extents found",
    ].join("\n");
    expect(parseFilefrag(text, 10485760)).toEqual([
      { start: 1024 * 4096, end: 1282 * 4096 },
      { start: 2048 * 4096, end: 2049 * 4096 },
    ]);
    expect(parseFilefrag("garbage", 100)).toBeUndefined();
  });
});

describe("deliver", () => {
  it("puts the image, sha256, bmap, manifest, log and ca.crt into --out, under the build's name", async () => {
    const { outDir, delivered } = await deliverAs("none", "none");
    const base = "pibake-test-pibake-test.freemyip.com-2026-01-02";
    expect(readdirSync(outDir).sort()).toEqual(["ca.crt", `${base}.img`, `${base}.img.bmap`, `${base}.img.sha256`, `${base}.log`, `${base}.manifest.json`]);
    expect(delivered.baseName).toBe(base);

    // sha256sum's own format and check.
    const check = await execa("sha256sum", ["-c", `${base}.img.sha256`], { cwd: outDir });
    expect(check.stdout).toBe(`${base}.img: OK`);
    expect(readFileSync(delivered.sha256File, "utf8")).toBe(sha256Line(delivered.sha256, `${base}.img`));

    // bmap-tools copies only the mapped blocks and gets the same image.
    const copy = path.join(work, "bmaptool-copy.img");
    await execa("bmaptool", ["copy", "--bmap", delivered.bmap, delivered.image, copy]);
    await execa("cmp", [copy, raw]);

    expect(readFileSync(path.join(outDir, "ca.crt"), "utf8")).toBe(fx.secrets.pki.caCertPem);
    const log = readFileSync(delivered.log, "utf8");
    expect(log).toContain("a line of the build");
    expect(log).toContain("password=***");
  });

  it.skipIf(process.getuid?.() !== 0)("under sudo, --out, the directories made for it and every delivered file are the invoking user's", async () => {
    const sudo = { SUDO_USER: "pibake-nobody", SUDO_UID: "4321", SUDO_GID: "4322" };
    const before = Object.fromEntries(Object.keys(sudo).map((k) => [k, process.env[k]]));
    Object.assign(process.env, sudo);
    try {
      const outDir = path.join(work, "sudo-made/deploy/out");
      await deliver({
        result: { imagePath: engineImage("sudo"), manifest: { engine: "test" }, timings: {} },
        ...buildSide(),
        outDir,
        compress: "none",
        logPath: logFile("sudo"),
      });
      const owners = [path.join(work, "sudo-made"), path.join(work, "sudo-made/deploy"), outDir, ...readdirSync(outDir).map((f) => path.join(outDir, f))].map(
        (p) => `${path.relative(work, p)} ${statSync(p).uid}:${statSync(p).gid}`,
      );
      expect(owners.filter((o) => !o.endsWith(" 4321:4322"))).toEqual([]);
      expect(owners).toHaveLength(9);
      // What was there already stays whose it was.
      expect(statSync(work).uid).toBe(0);
    } finally {
      for (const [k, v] of Object.entries(before)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it("writes a manifest with the engine's facts, the certificate and digests, and no secret", async () => {
    const { delivered } = await deliverAs("none", "manifest");
    const m = JSON.parse(readFileSync(delivered.manifest, "utf8"));
    const cert = summarize(fx.secrets.pki.serverCertPem);
    expect(m).toMatchObject({
      name: "pibake-test",
      release: "trixie",
      arch: "arm64",
      domain: "pibake-test.freemyip.com",
      image: {
        file: `${delivered.baseName}.img`,
        compression: "none",
        size: 64 * MiB + 1536,
        rawSize: 64 * MiB + 1536,
        sha256: delivered.sha256,
        rawSha256: delivered.sha256,
      },
      config: { file: "broker.json" },
      certificate: { subject: "CN=pibake-test.freemyip.com", sha256Fingerprint: cert.fingerprint256, notAfter: cert.notAfter.toISOString() },
      ca: { sha256Fingerprint: summarize(fx.secrets.pki.caCertPem).fingerprint256 },
      engine: { engine: "test", facts: 1 },
      timings: { render: 7, engineStep: 5 },
    });
    expect(m.config.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(m.config.secrets).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);
    expect(m.files[`${delivered.baseName}.img.bmap`]).toBe(`sha256:${(await execa("sha256sum", [delivered.bmap])).stdout.split(" ")[0]}`);
    expect(m.files[`${delivered.baseName}.img`]).toBe(`sha256:${delivered.sha256}`);
  });

  it("leaves no secret value of the config in any delivered file", async () => {
    const { outDir } = await deliverAs("none", "secrets");
    const secrets = [fx.clear.userPassword, ...Object.values(fx.clear.mqtt), fx.clear.ddns!].filter(Boolean);
    for (const f of readdirSync(outDir)) {
      const content = readFileSync(path.join(outDir, f));
      for (const s of secrets) expect(content.includes(Buffer.from(s)), `${f} holds a secret`).toBe(false);
    }
  });

  it("compresses with zstd so that zstd -t passes, the size is recorded and the bytes are the image's", async () => {
    const { outDir, delivered } = await deliverAs("zstd", "zstd");
    expect(path.basename(delivered.image)).toBe(`${delivered.baseName}.img.zst`);
    await execa("zstd", ["-t", "-q", delivered.image]);
    const back = path.join(work, "unzstd.img");
    await execa("zstd", ["-d", "-q", "-o", back, delivered.image]);
    await execa("cmp", [back, raw]);
    expect((await probeImage(delivered.image)).size).toBe(64 * MiB + 1536);
    expect((await execa("sha256sum", ["-c", path.basename(delivered.sha256File)], { cwd: outDir })).stdout).toMatch(/: OK$/);
    const m = JSON.parse(readFileSync(delivered.manifest, "utf8"));
    expect(m.image.rawSha256).toBe((await execa("sha256sum", [raw])).stdout.split(" ")[0]);
    expect(m.image.sha256).toBe(delivered.sha256);
  });

  it("compresses with xz, and bmaptool copies the .xz with the bmap", async () => {
    const { outDir, delivered } = await deliverAs("xz", "xz");
    expect(path.basename(delivered.image)).toBe(`${delivered.baseName}.img.xz`);
    await execa("xz", ["-t", delivered.image]);
    expect((await probeImage(delivered.image)).size).toBe(64 * MiB + 1536);
    const copy = path.join(work, "bmaptool-xz.img");
    await execa("bmaptool", ["copy", delivered.image, copy]);
    await execa("cmp", [copy, raw]);
    expect((await execa("sha256sum", ["-c", path.basename(delivered.sha256File)], { cwd: outDir })).stdout).toMatch(/: OK$/);
  });

  it("replaces the same build delivered in another compression, so that no image is left with a bmap that is not its own", async () => {
    const outDir = path.join(work, "out-replace");
    const first = await deliver({
      result: { imagePath: engineImage("r1"), manifest: {}, timings: {} },
      ...buildSide(),
      outDir,
      compress: "none",
      logPath: logFile("r1"),
    });
    await deliver({ result: { imagePath: engineImage("r2"), manifest: {}, timings: {} }, ...buildSide(), outDir, compress: "zstd", logPath: logFile("r2") });
    expect(existsSync(first.image)).toBe(false);
    expect(existsSync(first.sha256File)).toBe(false);
    expect(readdirSync(outDir).filter((f) => /\.img(\.|$)/.test(f) && !f.endsWith(".bmap") && !f.endsWith(".sha256"))).toEqual([`${first.baseName}.img.zst`]);
  });

  it("interrupted while compressing: nothing in --out, no temporary file, the engine's image untouched", async () => {
    const outDir = path.join(work, "out-abort");
    mkdirSync(outDir);
    writeFileSync(path.join(outDir, "keep.txt"), "someone else's file");
    const ac = new AbortController();
    const img = engineImage("abort");
    const run = deliver({
      result: { imagePath: img, manifest: {}, timings: {} },
      ...buildSide(),
      outDir,
      compress: "xz",
      logPath: logFile("abort"),
      signal: ac.signal,
    });
    // Abort as soon as the compressor has an output file.
    const deadline = Date.now() + 10_000;
    while (!readdirSync(outDir).some((f) => f.startsWith(".pibake-tmp-")) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    ac.abort(new Error("stop"));
    await expect(run).rejects.toThrow(/stop/);
    expect(readdirSync(outDir)).toEqual(["keep.txt"]);
    await execa("cmp", [img, raw]);
  });
});

describe("config digest", () => {
  it("changes with a secret's value, repeats otherwise, and holds no secret", async () => {
    const a = configDigests(fx.model, fx.state);
    expect(configDigests(fx.model, fx.state)).toEqual(a);
    const config = baseConfig();
    config.nodeRed = { enabled: false };
    const other = await renderFixture({ config, env: { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_MQTT_PHONE: "another-Secret-99" }, stateDir: fx.state.dir });
    const b = configDigests(other.model, other.state);
    expect(b.digest).toBe(a.digest);
    expect(b.secretsHmac).not.toBe(a.secretsHmac);
    const text = JSON.stringify(a);
    for (const s of Object.values(DEFAULT_SECRET_ENV)) expect(text).not.toContain(s);
  });
});

describe("leftovers of killed builds", () => {
  it("removes temporary files whose build is gone, and only those", async () => {
    const dir = path.join(work, "stale");
    mkdirSync(dir);
    const dead = ".pibake-tmp-999999999-x.img";
    const live = `.pibake-tmp-${process.pid}-y.img`;
    for (const f of [dead, live, "x.img"]) writeFileSync(path.join(dir, f), "");
    expect(await removeStaleTemps(dir)).toEqual([dead]);
    expect(readdirSync(dir).sort()).toEqual([live, "x.img"].sort());
  });
});
