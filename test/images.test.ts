import { execa } from "execa";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { imageCacheLocation, readCache } from "../src/official/cache.js";
import { proxyFor } from "../src/official/http.js";
import { listUrlOf, resolveOfficialImage, type ResolveImageOptions } from "../src/official/index.js";
import { chooseImage, parseOsList } from "../src/official/os-list.js";
import { formatImageProgress, plainProgressPrinter, type ImageProgress } from "../src/official/progress.js";
import { pibake, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { makeSmallImage, startImageServer, startProxy, type ImageServer, type SmallImage } from "./helpers/image-server.js";

/**
 * The official image path against a download host on 127.0.0.1 that serves an
 * OS list nested as Raspberry Pi Imager's real one is, and small real disk
 * images (an MBR by sfdisk, compressed by xz). No test reaches the Internet.
 */

const TRIXIE_ARM64 = "raspios_lite_arm64/images/raspios_lite_arm64-2025-12-04/2025-12-04-raspios-trixie-arm64-lite.img.xz";
const TRIXIE_ARM64_OLDER = "raspios_lite_arm64/images/raspios_lite_arm64-2025-11-24/2025-11-24-raspios-trixie-arm64-lite.img.xz";
const TRIXIE_ARMHF = "raspios_lite_armhf/images/raspios_lite_armhf-2025-12-04/2025-12-04-raspios-trixie-armhf-lite.img.xz";
// The previous release: its folder is dated a day after the file, as Raspberry Pi's sometimes are.
const BOOKWORM_ARM64 = "raspios_oldstable_lite_arm64/images/raspios_oldstable_lite_arm64-2025-12-05/2025-12-04-raspios-bookworm-arm64-lite.img.xz";

let work: { dir: string; cleanup: () => void };
const images: Record<string, SmallImage> = {};
/** Some MiB of xz: enough that the body outruns pibake's writes and hashing, as the real image does. */
let big: SmallImage;

beforeAll(async () => {
  work = tempDir("pibake-images-");
  for (const p of [TRIXIE_ARM64, TRIXIE_ARM64_OLDER, TRIXIE_ARMHF, BOOKWORM_ARM64]) images[p] = await makeSmallImage(work.dir, path.basename(p));
  mkdirSync(path.join(work.dir, "big"));
  big = await makeSmallImage(path.join(work.dir, "big"), path.basename(TRIXIE_ARM64), 6 << 20);
}, 120_000);
afterAll(() => work?.cleanup());

function entry(server: ImageServer, p: string, name: string, description: string, extra: Record<string, unknown> = {}) {
  const img = images[p]!;
  return {
    name,
    description,
    icon: "https://downloads.raspberrypi.com/raspios_lite_arm64/Raspberry_Pi_OS_(64-bit).png",
    url: `${server.base}/images/${p}`,
    extract_size: img.extractSize,
    extract_sha256: img.extractSha256,
    image_download_size: img.xz.length,
    image_download_sha256: img.downloadSha256,
    release_date: path.basename(p).slice(0, 10),
    init_format: p.includes("bookworm") ? "systemd" : "cloudinit-rpi",
    devices: p.includes("arm64") ? ["pi5-64bit", "pi4-64bit", "pi3-64bit"] : ["pi5-32bit", "pi4-32bit", "pi3-32bit", "pi2-32bit", "pi1-32bit"],
    ...extra,
  };
}

/** Shaped after os_list_imagingutility_v4.json: desktop at the top, Lite under "Raspberry Pi OS (other)", vendors behind subitems_url. */
function officialList(server: ImageServer, change: (lite: Record<string, unknown>[]) => void = () => {}) {
  const lite: Record<string, unknown>[] = [
    entry(
      server,
      TRIXIE_ARM64,
      "Raspberry Pi OS Lite (64-bit)",
      "A port of Debian Trixie with no desktop environment (Compatible with Raspberry Pi 3/4/400/5)",
    ),
    entry(server, TRIXIE_ARMHF, "Raspberry Pi OS Lite (32-bit)", "A port of Debian Trixie with no desktop environment"),
    entry(server, BOOKWORM_ARM64, "Raspberry Pi OS (Legacy, 64-bit) Lite", "A port of Debian Bookworm with security updates and no desktop environment"),
    // Not in the real list (it holds current releases only): an older release, for pinning.
    entry(server, TRIXIE_ARM64_OLDER, "Raspberry Pi OS Lite (64-bit)", "The previous point release"),
  ];
  change(lite);
  return {
    imager: {
      latest_version: "2.0.3",
      url: "https://www.raspberrypi.com/software/",
      devices: [{ name: "Raspberry Pi 5", tags: ["pi5-64bit", "pi5-32bit"], description: "", architecture: "armv8" }],
    },
    os_list: [
      {
        name: "Raspberry Pi OS (64-bit)",
        description: "A port of Debian Trixie with the Raspberry Pi Desktop (Recommended)",
        icon: "",
        url: `${server.base}/images/raspios_arm64/images/raspios_arm64-2025-12-04/2025-12-04-raspios-trixie-arm64.img.xz`,
        extract_size: 1,
        extract_sha256: "0".repeat(64),
        image_download_size: 1,
        release_date: "2025-12-04",
        devices: ["pi5-64bit"],
      },
      {
        name: "Raspberry Pi OS (other)",
        description: "Other Raspberry Pi OS based images",
        icon: "",
        subitems: [
          lite[0],
          lite[1],
          {
            name: "Raspberry Pi OS Full (64-bit)",
            description: "desktop and recommended applications",
            url: `${server.base}/images/raspios_full_arm64/images/raspios_full_arm64-2025-12-04/2025-12-04-raspios-trixie-arm64-full.img.xz`,
            release_date: "2025-12-04",
          },
          lite[2],
          ...lite.slice(3),
        ],
      },
      { name: "Other general-purpose OS", description: "Other general-purpose operating systems", icon: "", subitems_url: `${server.base}/os_list_other.json` },
      {
        name: "Misc utility images",
        description: "Bootloader EEPROM configuration, etc.",
        icon: "",
        subitems: [{ name: "Bootloader (Pi 5 family)", description: "", subitems_url: `${server.base}/eeprom.json` }],
      },
    ],
  };
}

let server: ImageServer;
let cache: { dir: string; cleanup: () => void };
let progress: ImageProgress[];
let statuses: string[];

beforeEach(async () => {
  server = await startImageServer();
  server.list = officialList(server);
  for (const p of Object.keys(images)) server.files.set(p, images[p]!.xz);
  cache = tempDir("pibake-image-cache-");
  progress = [];
  statuses = [];
});
afterEach(async () => {
  await server?.close();
  cache?.cleanup();
});

function opts(extra: Partial<ResolveImageOptions> = {}): ResolveImageOptions {
  return {
    release: "trixie",
    arch: "arm64",
    listUrl: `${server.base}/os_list.json`,
    cacheDir: cache.dir,
    env: {},
    onProgress: (p) => progress.push(p),
    onStatus: (s) => statuses.push(s),
    timeouts: { connectMs: 5_000, headersMs: 5_000, idleMs: 5_000 },
    ...extra,
  };
}

/** Files outside partial/ that are named like an image: what a later run or a user would take for complete. */
function completeLooking(): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = path.join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.endsWith(".img.xz")) out.push(path.relative(cache.dir, p));
    }
  };
  walk(cache.dir);
  return out;
}

async function xzDigest(file: string): Promise<string> {
  return (await execa("bash", ["-c", 'xz -dc -- "$1" | sha256sum', "_", file])).stdout.split(" ")[0]!;
}

describe("the OS list", () => {
  it("finds every Raspberry Pi OS Lite image in Imager's nesting, and follows no subitems_url", () => {
    const list = parseOsList(JSON.stringify(officialList({ base: "https://downloads.raspberrypi.com" } as ImageServer)), "test");
    expect(list.images.map((e) => `${e.release}/${e.arch} ${e.releaseDate} ${e.name} @ ${e.where}`)).toEqual([
      "trixie/arm64 2025-12-04 Raspberry Pi OS Lite (64-bit) @ os_list[1].subitems[0]",
      "trixie/armhf 2025-12-04 Raspberry Pi OS Lite (32-bit) @ os_list[1].subitems[1]",
      "bookworm/arm64 2025-12-04 Raspberry Pi OS (Legacy, 64-bit) Lite @ os_list[1].subitems[3]",
      "trixie/arm64 2025-11-24 Raspberry Pi OS Lite (64-bit) @ os_list[1].subitems[4]",
    ]);
    expect(list.skippedSublists).toBe(2);
    expect(chooseImage(list, { release: "trixie", arch: "arm64" }, "test").fileName).toBe("2025-12-04-raspios-trixie-arm64-lite.img.xz");
    expect(chooseImage(list, { release: "bookworm", arch: "arm64" }, "test").url).toMatch(/raspios_oldstable_lite_arm64-2025-12-05\//);
  });

  it("ignores a malformed entry of another vendor, and names the field of a malformed Lite entry", () => {
    const doc = officialList({ base: "https://downloads.raspberrypi.com" } as ImageServer) as any;
    doc.os_list.push({ name: "Someone's OS", url: "https://example.org/os.img.xz", extract_sha256: 42 });
    expect(parseOsList(JSON.stringify(doc), "test").images).toHaveLength(4);
    doc.os_list[1].subitems[1].extract_sha256 = "not-a-digest";
    expect(() => parseOsList(JSON.stringify(doc), "L")).toThrow(
      /^the OS list from L is not in Raspberry Pi Imager's format: os_list\[1\]\.subitems\[1\]\.extract_sha256: "not-a-digest" is not a SHA-256 digest/,
    );
    expect(() => parseOsList("{}", "L")).toThrow(/os_list: missing/);
    expect(() => parseOsList("<html>", "L")).toThrow(/is not JSON/);
  });
});

describe("resolveOfficialImage", () => {
  it("downloads the newest Lite image, verifies both digests, caches it, and reuses it without asking for the image again", async () => {
    const first = await resolveOfficialImage(opts());
    expect(first.fromCache).toBe(false);
    const img = images[TRIXIE_ARM64]!;
    expect(first.entry).toMatchObject({
      name: "Raspberry Pi OS Lite (64-bit)",
      releaseDate: "2025-12-04",
      downloadSha256: img.downloadSha256,
      extractSha256: img.extractSha256,
      url: `${server.base}/images/${TRIXIE_ARM64}`,
    });
    expect(first.path).toBe(path.join(cache.dir, img.downloadSha256, "2025-12-04-raspios-trixie-arm64-lite.img.xz"));
    // The real xz and sha256sum agree with what was checked.
    await execa("xz", ["--test", first.path]);
    expect(await xzDigest(first.path)).toBe(img.extractSha256);
    expect((await execa("sha256sum", [first.path])).stdout.split(" ")[0]).toBe(img.downloadSha256);
    const sidecar = JSON.parse(readFileSync(path.join(path.dirname(first.path), "image.json"), "utf8"));
    expect(sidecar).toMatchObject({
      release: "trixie",
      arch: "arm64",
      downloadSize: img.xz.length,
      extractSize: img.extractSize,
      listUrl: `${server.base}/os_list.json`,
    });
    expect(Date.now() - Date.parse(sidecar.verifiedAt)).toBeLessThan(60_000);
    expect(existsSync(path.join(cache.dir, "partial", "2025-12-04-raspios-trixie-arm64-lite.img.xz.part"))).toBe(false);
    // Progress: the download, then the check of the decompressed image, each ending at its total.
    const downloads = progress.filter((p) => p.phase === "download");
    expect(downloads.at(-1)).toMatchObject({ done: img.xz.length, total: img.xz.length });
    expect(progress.filter((p) => p.phase === "check").at(-1)).toMatchObject({ done: img.extractSize, total: img.extractSize });
    expect(formatImageProgress(downloads.at(-1)!)).toMatch(/^downloading 2025-12-04-raspios-trixie-arm64-lite\.img\.xz: [\d.]+ KiB of [\d.]+ KiB \(100%\)/);
    // The desktop image and the vendors' sublists were never asked for.
    expect(server.requests.map((r) => r.path)).toEqual(["/os_list.json", `/images/${TRIXIE_ARM64}`]);

    progress = [];
    const second = await resolveOfficialImage(opts());
    expect(second).toMatchObject({ fromCache: true, path: first.path, entry: { downloadSha256: img.downloadSha256 } });
    expect(server.imageRequests()).toHaveLength(1);
    expect(server.requests.filter((r) => r.path === "/os_list.json")).toHaveLength(2);

    // Offline: no request at all, and the cached image.
    const before = server.requests.length;
    const offline = await resolveOfficialImage(opts({ env: { PIBAKE_OFFLINE: "1" } }));
    expect(offline).toMatchObject({ fromCache: true, path: first.path });
    expect(server.requests.length).toBe(before);
    expect(statuses.at(-2)).toMatch(/cannot read the OS list .* \(PIBAKE_OFFLINE=1\): using the cached 2025-12-04-raspios-trixie-arm64-lite\.img\.xz/);

    // The list's host gone: the cache, after the one failed attempt at the list.
    await server.close();
    const unreachable = await resolveOfficialImage(opts());
    expect(unreachable).toMatchObject({ fromCache: true, path: first.path });
    expect(statuses.join("\n")).toMatch(/cannot read the OS list http:\/\/127\.0\.0\.1:\d+\/os_list\.json \(ECONNREFUSED/);
  });

  it("follows a redirect to a mirror", async () => {
    server.list = officialList(server, (lite) => (lite[0]!.url = `${server.base}/redirect/${TRIXIE_ARM64}`));
    const r = await resolveOfficialImage(opts());
    expect(r.entry.downloadSha256).toBe(images[TRIXIE_ARM64]!.downloadSha256);
    expect(server.imageRequests().map((q) => q.path)).toEqual([`/redirect/${TRIXIE_ARM64}`, `/images/${TRIXIE_ARM64}`]);
  });

  it("continues an interrupted download with a Range request, and leaves nothing that looks complete in between", async () => {
    const img = images[TRIXIE_ARM64]!;
    server.cutAfter = 200_000;
    await expect(resolveOfficialImage(opts())).rejects.toThrow(/broke off after \d+ bytes .*run again to continue from .*\.part$/);
    const part = path.join(cache.dir, "partial", "2025-12-04-raspios-trixie-arm64-lite.img.xz.part");
    const kept = statSync(part).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(img.xz.length);
    expect(completeLooking()).toEqual([]);
    expect(readCache(cache.dir).images).toEqual([]);

    const r = await resolveOfficialImage(opts());
    expect(server.imageRequests().at(-1)).toEqual({ method: "GET", path: `/images/${TRIXIE_ARM64}`, range: `bytes=${kept}-` });
    expect(r.fromCache).toBe(false);
    expect(await xzDigest(r.path)).toBe(img.extractSha256);
    expect(progress.filter((p) => p.phase === "download").at(-1)).toMatchObject({ done: img.xz.length, resumedFrom: kept });
    expect(statuses).toContain(`continuing the download of ${server.base}/images/${TRIXIE_ARM64} at ${kept} bytes`);
  });

  it("starts again when the server ignores Range and sends the whole file", async () => {
    server.cutAfter = 150_000;
    await expect(resolveOfficialImage(opts())).rejects.toThrow(/broke off/);
    server.ignoreRange = true;
    const r = await resolveOfficialImage(opts());
    expect(server.imageRequests().at(-1)!.range).toMatch(/^bytes=\d+-$/);
    expect(statuses.join("\n")).toMatch(/does not resume downloads .*starting again/);
    expect(r.entry.downloadSha256).toBe(images[TRIXIE_ARM64]!.downloadSha256);
  });

  it("an abort signal stops the download, keeps a resumable .part and nothing complete", async () => {
    const ctl = new AbortController();
    const reason = new Error("interrupted by SIGINT");
    server.pieceDelayMs = 60;
    await expect(
      resolveOfficialImage(opts({ signal: ctl.signal, onProgress: (p) => p.phase === "download" && p.done >= 128 << 10 && ctl.abort(reason) })),
    ).rejects.toBe(reason);
    expect(completeLooking()).toEqual([]);
    const kept = statSync(path.join(cache.dir, "partial", "2025-12-04-raspios-trixie-arm64-lite.img.xz.part")).size;
    expect(kept).toBeGreaterThanOrEqual(128 << 10);
    expect(kept).toBeLessThan(images[TRIXIE_ARM64]!.xz.length);
    server.pieceDelayMs = 0;
    const r = await resolveOfficialImage(opts());
    expect(server.imageRequests().at(-1)!.range).toBe(`bytes=${kept}-`);
    expect(r.entry.extractSha256).toBe(images[TRIXIE_ARM64]!.extractSha256);
  });

  it("a download stopped during its check is checked again without a request; without a size in the list the server's 416 says it is whole", async () => {
    const ctl = new AbortController();
    await expect(resolveOfficialImage(opts({ signal: ctl.signal, onProgress: (p) => p.phase === "check" && ctl.abort(new Error("stop")) }))).rejects.toThrow(
      "stop",
    );
    expect(completeLooking()).toEqual([]);
    const requests = server.imageRequests().length;
    await resolveOfficialImage(opts());
    expect(server.imageRequests()).toHaveLength(requests);
    expect(statuses.join("\n")).toMatch(/was downloaded before the last run stopped: checking it/);

    // Again, with a list that gives no download size: the server is asked for the rest and has none.
    server.list = officialList(server, (lite) => delete lite[1]!.image_download_size);
    const ctl2 = new AbortController();
    await expect(
      resolveOfficialImage(opts({ arch: "armhf", signal: ctl2.signal, onProgress: (p) => p.phase === "check" && ctl2.abort(new Error("stop")) })),
    ).rejects.toThrow("stop");
    expect(completeLooking()).toEqual([path.join(images[TRIXIE_ARM64]!.downloadSha256, "2025-12-04-raspios-trixie-arm64-lite.img.xz")]);
    const r = await resolveOfficialImage(opts({ arch: "armhf" }));
    const whole = images[TRIXIE_ARMHF]!.xz.length;
    expect(server.imageRequests().at(-1)).toMatchObject({ path: `/images/${TRIXIE_ARMHF}`, range: `bytes=${whole}-` });
    expect(r.entry.downloadSha256).toBe(images[TRIXIE_ARMHF]!.downloadSha256);
  });

  it("refuses a corrupted download, naming both digests, and deletes it", async () => {
    server.corrupt = true;
    const img = images[TRIXIE_ARM64]!;
    const err = await resolveOfficialImage(opts()).catch((e: Error) => e);
    expect(String(err)).toMatch(new RegExp(`its SHA-256 is [0-9a-f]{64}, the list \\(.*\\) says ${img.downloadSha256}\\. The download was deleted`));
    expect(String(err)).not.toContain(`is ${img.downloadSha256}`);
    expect(readdirSync(path.join(cache.dir, "partial"))).toEqual([]);
    expect(completeLooking()).toEqual([]);
  });

  it("refuses an image whose decompressed digest is not the list's, naming both, and deletes it", async () => {
    const wrong = "ab".repeat(32);
    server.list = officialList(server, (lite) => (lite[0]!.extract_sha256 = wrong));
    const err = await resolveOfficialImage(opts()).catch((e: Error) => e);
    expect(String(err)).toContain(
      `its SHA-256 is ${images[TRIXIE_ARM64]!.extractSha256} (${4 << 20} bytes), the list (${server.base}/os_list.json) says ${wrong}`,
    );
    expect(readdirSync(path.join(cache.dir, "partial"))).toEqual([]);
    expect(completeLooking()).toEqual([]);
  });

  it("a pinned date picks its release, and once cached is used without asking the list", async () => {
    const r = await resolveOfficialImage(opts({ date: "2025-11-24" }));
    expect(r.entry).toMatchObject({
      releaseDate: "2025-11-24",
      fileName: "2025-11-24-raspios-trixie-arm64-lite.img.xz",
      downloadSha256: images[TRIXIE_ARM64_OLDER]!.downloadSha256,
    });
    const before = server.requests.length;
    const again = await resolveOfficialImage(opts({ date: "2025-11-24" }));
    expect(again).toMatchObject({ fromCache: true, path: r.path });
    expect(server.requests.length).toBe(before);
    // The pin is also met by the date in the file name when the list's differs by a day.
    server.list = officialList(server, (lite) => (lite[2]!.release_date = "2025-12-05"));
    expect((await resolveOfficialImage(opts({ release: "bookworm", date: "2025-12-04" }))).entry.fileName).toBe(
      "2025-12-04-raspios-bookworm-arm64-lite.img.xz",
    );
  });

  it("refuses a release, arch or date the list does not offer, naming what it offers", async () => {
    server.list = officialList(server, (lite) => lite.splice(3, 1));
    await expect(resolveOfficialImage(opts({ release: "bookworm", arch: "armhf" }))).rejects.toThrow(
      /has no Raspberry Pi OS Lite image for bookworm\/armhf; it offers: bookworm\/arm64 2025-12-04, trixie\/arm64 2025-12-04, trixie\/armhf 2025-12-04$/,
    );
    await expect(resolveOfficialImage(opts({ date: "2024-03-15" }))).rejects.toThrow(/for trixie\/arm64 2024-03-15; it offers: .*--base FILE/);
    await expect(resolveOfficialImage(opts({ date: "15.03.2024" }))).rejects.toThrow(/YYYY-MM-DD/);
    expect(server.imageRequests()).toEqual([]);
  });

  it("offline with nothing cached: an error naming the list, the image to fetch by hand when known, and --base", async () => {
    const err = await resolveOfficialImage(opts({ env: { PIBAKE_OFFLINE: "1" } })).catch((e: Error) => e);
    expect(String(err)).toContain(
      `cannot read the OS list ${server.base}/os_list.json (PIBAKE_OFFLINE=1), and no Raspberry Pi OS Lite image for trixie/arm64 is in the cache (${cache.dir})`,
    );
    expect(String(err)).toMatch(/by hand from https:\/\/www\.raspberrypi\.com\/software\/operating-systems\/ and pass it with --base FILE/);
    // After a list was read once, its image URL is named.
    mkdirSync(cache.dir, { recursive: true });
    writeFileSync(path.join(cache.dir, "os_list.json"), JSON.stringify(server.list));
    await server.close();
    const err2 = await resolveOfficialImage(opts({ release: "bookworm" })).catch((e: Error) => e);
    expect(String(err2)).toMatch(/ECONNREFUSED/);
    expect(String(err2)).toContain(`Download ${server.base}/images/${BOOKWORM_ARM64} by hand and pass it with --base FILE`);
  });

  it("one download of a file at a time: a live lock refuses, a dead one is taken over", async () => {
    const partial = path.join(cache.dir, "partial");
    mkdirSync(partial, { recursive: true });
    const lock = path.join(partial, "2025-12-04-raspios-trixie-arm64-lite.img.xz.part.lock");
    const sleeper = execa("sleep", ["30"]);
    try {
      writeFileSync(lock, String(sleeper.pid));
      await expect(resolveOfficialImage(opts())).rejects.toThrow(
        `another pibake (pid ${sleeper.pid}) is downloading 2025-12-04-raspios-trixie-arm64-lite.img.xz`,
      );
      expect(server.imageRequests()).toEqual([]);
    } finally {
      sleeper.kill();
      await sleeper.catch(() => {});
    }
    // The sleeper is gone now: its lock is stale.
    const r = await resolveOfficialImage(opts());
    expect(r.fromCache).toBe(false);
    expect(existsSync(lock)).toBe(false);
  });

  it.skipIf(process.getuid?.() !== 0)("under sudo, what it stores belongs to the user who ran sudo", async () => {
    const xdg = path.join(cache.dir, "xdg");
    mkdirSync(xdg);
    const r = await resolveOfficialImage(
      opts({ cacheDir: undefined, env: { XDG_CACHE_HOME: xdg, SUDO_USER: "nobody", SUDO_UID: "65534", SUDO_GID: "65534" } }),
    );
    expect(r.path.startsWith(path.join(xdg, "pibake", "images") + path.sep)).toBe(true);
    const owners = [
      path.join(xdg, "pibake"),
      path.join(xdg, "pibake", "images"),
      path.dirname(r.path),
      r.path,
      path.join(path.dirname(r.path), "image.json"),
      path.join(xdg, "pibake", "images", "os_list.json"),
    ].map((f) => `${path.relative(xdg, f)} ${statSync(f).uid}:${statSync(f).gid}`);
    expect(owners).toEqual(owners.map((o) => o.replace(/ \d+:\d+$/, " 65534:65534")));
  });

  it("goes through the proxy that HTTP_PROXY names, and not for hosts in NO_PROXY", async () => {
    const proxy = await startProxy();
    try {
      await resolveOfficialImage(opts({ env: { HTTP_PROXY: proxy.url } }));
      expect([...proxy.connects, ...proxy.forwarded].length).toBeGreaterThanOrEqual(1);
      expect(proxy.connects.every((c) => c === `127.0.0.1:${server.port}`)).toBe(true);
      expect(server.imageRequests()).toHaveLength(1);
      const through = proxy.connects.length + proxy.forwarded.length;
      await resolveOfficialImage(opts({ arch: "armhf", env: { http_proxy: proxy.url, no_proxy: "127.0.0.1" } }));
      expect(proxy.connects.length + proxy.forwarded.length).toBe(through);
      expect(server.imageRequests()).toHaveLength(2);
    } finally {
      await proxy.close();
    }
  });
});

/**
 * Servers that end the connection themselves, as Python's http.server does,
 * with `pibake images fetch` run as a process: an exception that escapes
 * (undici's HTTP/1 parser asserted from a socket's "end" handler when it had
 * been paused by a slow reader) fails the run instead of passing unseen.
 */
describe("a server that closes the connection", () => {
  const FILE = path.basename(TRIXIE_ARM64);
  let run = 0;

  /** `pibake images fetch` for trixie/arm64 into a cache of its own (or the one given). */
  async function fetchCli(env: Record<string, string> = {}, xdg = path.join(cache.dir, `run-${++run}`)) {
    const r = await pibake(["images", "fetch", "--os-list", `${server.base}/os_list.json`], {
      env: { XDG_CACHE_HOME: xdg, PIBAKE_OFFLINE: "0", ...env },
      timeout: 90_000,
    });
    const partial = path.join(xdg, "pibake", "images", "partial");
    return { ...r, xdg, partial, leftInPartial: existsSync(partial) ? readdirSync(partial).sort() : [] };
  }

  function serveBig() {
    server.files.set(TRIXIE_ARM64, big.xz);
    server.list = officialList(server, (lite) =>
      Object.assign(lite[0]!, {
        image_download_size: big.xz.length,
        image_download_sha256: big.downloadSha256,
        extract_size: big.extractSize,
        extract_sha256: big.extractSha256,
      }),
    );
  }

  function expectFetched(r: Awaited<ReturnType<typeof fetchCli>>, img: SmallImage) {
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain(`sha256 ${img.downloadSha256}, downloaded and verified`);
    expect(r.leftInPartial).toEqual([]);
  }

  it("Content-Length, the whole body and the FIN at once, the reader behind (HTTP/1.0, as Python's server): every run completes", async () => {
    serveBig();
    server.framing = "http1.0";
    // Whether the FIN finds the reader paused is a race: several runs make a miss unlikely.
    for (let i = 0; i < 5; i++) expectFetched(await fetchCli(), big);
    expect(big.xz.length).toBeGreaterThan(5 << 20);
  }, 300_000);

  it("HTTP/1.1 with Connection: close, with and without Content-Length: the list and the image complete", async () => {
    serveBig();
    server.framing = "close";
    expectFetched(await fetchCli(), big);
    server.contentLength = false;
    expectFetched(await fetchCli(), big);
    server.framing = "http1.0";
    expectFetched(await fetchCli(), big);
  }, 300_000);

  for (const contentLength of [true, false]) {
    it(`a FIN in the middle of the body (${contentLength ? "with" : "without"} Content-Length): a resumable .part, the URL, the bytes and how to go on, exit 1; the next run continues it`, async () => {
      const img = images[TRIXIE_ARM64]!;
      server.framing = "http1.0";
      server.contentLength = contentLength;
      server.cutAfter = 200_000;
      const cut = await fetchCli();
      expect(cut.exitCode, cut.stderr).toBe(1);
      const url = `${server.base}/images/${TRIXIE_ARM64}`;
      const part = path.join(cut.partial, `${FILE}.part`);
      // With Content-Length, Node drops what it had received but not yet handed over when the connection ends early: the .part holds what was written, the next run asks for the rest.
      const kept = statSync(part).size;
      expect(kept).toBeGreaterThan(0);
      expect(kept).toBeLessThanOrEqual(200_000);
      if (!contentLength) expect(kept).toBe(200_000);
      // Status lines go to stderr too; the failure is the line pibake prints last.
      expect(cut.stderr.trim().split("\n").at(-1)).toBe(
        contentLength
          ? `pibake: downloading ${url} broke off after ${kept} bytes (the connection closed before the end of the body); run again to continue from ${part}`
          : `pibake: the download of ${url} ended after ${kept} of ${img.xz.length} bytes; run again to continue from ${part}`,
      );
      // The .part and its record stay for the next run; the lock does not.
      expect(cut.leftInPartial).toEqual([`${FILE}.part`, `${FILE}.part.json`]);

      const again = await fetchCli({}, cut.xdg);
      expectFetched(again, img);
      expect(server.imageRequests().at(-1)).toEqual({ method: "GET", path: `/images/${TRIXIE_ARM64}`, range: `bytes=${kept}-` });
    }, 120_000);
  }

  it("the same through the proxy that HTTP_PROXY names (a CONNECT tunnel): whole bodies complete, a cut one is kept and continued", async () => {
    const proxy = await startProxy();
    try {
      serveBig();
      server.framing = "http1.0";
      for (let i = 0; i < 3; i++) expectFetched(await fetchCli({ HTTP_PROXY: proxy.url }), big);
      server.cutAfter = 1_000_000;
      const cut = await fetchCli({ HTTP_PROXY: proxy.url });
      expect(cut.exitCode, cut.stderr).toBe(1);
      expect(cut.stderr).toMatch(
        /^pibake: downloading .* broke off after \d+ bytes \(the connection closed before the end of the body\); run again to continue from .*\.part$/m,
      );
      expect(cut.leftInPartial).toEqual([`${FILE}.part`, `${FILE}.part.json`]);
      expectFetched(await fetchCli({ HTTP_PROXY: proxy.url }, cut.xdg), big);
      expect(proxy.connects.length).toBeGreaterThanOrEqual(10);
      expect(proxy.connects.every((c) => c === `127.0.0.1:${server.port}`)).toBe(true);
    } finally {
      await proxy.close();
    }
  }, 300_000);

  // The report's route: `pibake build CONFIG` reaches its download step only where a build can run (root, qemu-user).
  const canBuild = process.getuid?.() === 0 && (existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64") || process.arch === "arm64");
  it.skipIf(!canBuild)(
    "pibake build, its image served as Python's http.server serves it, with wrong bytes: the download step fails naming both digests, nothing kept but the log",
    async () => {
      serveBig();
      server.framing = "http1.0";
      server.corrupt = true;
      const img = big;
      const cfg = writeJson(path.join(cache.dir, "broker.json"), validConfig());
      const out = path.join(cache.dir, "out");
      const xdg = path.join(cache.dir, "xdg");
      const r = await pibake(
        ["build", cfg, "--os-list", `${server.base}/os_list.json`, "--out", out, "--state", path.join(cache.dir, "state"), "--log-format", "plain"],
        {
          env: { ...secretEnv, XDG_CACHE_HOME: xdg, PIBAKE_OFFLINE: "0" },
          timeout: 300_000,
        },
      );
      expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(1);
      expect(r.stdout).toContain("[2/7] download base");
      expect(r.stderr).toMatch(/^pibake: step "download base" failed: could not get the official Raspberry Pi OS Lite image:$/m);
      expect(r.stderr).toMatch(
        new RegExp(
          `^the download of ${server.base}/images/${TRIXIE_ARM64} is not the file the OS list describes: its SHA-256 is [0-9a-f]{64}, the list \\(.*\\) says ${img.downloadSha256}\\. The download was deleted`,
          "m",
        ),
      );
      expect(readdirSync(path.join(xdg, "pibake", "images", "partial"))).toEqual([]);
      expect(readdirSync(out)).toEqual([expect.stringMatching(/^test-broker-home\.freemyip\.com-\d{4}-\d\d-\d\d\.failed\.log$/)]);
    },
    300_000,
  );

  for (const framing of ["http1.0", "close"] as const) {
    it(`wrong bytes with the connection closed after them (${framing}): refused naming both digests, removed, the lock released`, async () => {
      server.framing = framing;
      server.corrupt = true;
      const img = images[TRIXIE_ARM64]!;
      const r = await fetchCli();
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stderr).toMatch(
        new RegExp(
          `^pibake: the download of ${server.base}/images/${TRIXIE_ARM64} is not the file the OS list describes: its SHA-256 is [0-9a-f]{64}, the list \\(.*\\) says ${img.downloadSha256}\\. The download was deleted`,
          "m",
        ),
      );
      expect(r.stderr).not.toContain(`is ${img.downloadSha256}`);
      expect(r.leftInPartial).toEqual([]);
    }, 120_000);
  }
});

describe("proxies from the environment", () => {
  it("NO_PROXY as curl reads it: *, hosts and their domains, ports, IPv6; the lower-case names win", () => {
    const env = { HTTPS_PROXY: "http://upper:3128", https_proxy: "http://proxy:3128", no_proxy: "example.org, .local:8080 *.lan [::1] 10.0.0.1" };
    const table: [string, string | undefined][] = [
      ["https://downloads.raspberrypi.com/os_list.json", "http://proxy:3128"],
      ["https://example.org/x", undefined],
      ["https://mirror.example.org/x", undefined],
      ["https://notexample.org/x", "http://proxy:3128"],
      ["https://pi.local:8080/x", undefined],
      ["https://pi.local/x", "http://proxy:3128"],
      ["https://box.lan/x", undefined],
      ["https://[::1]:8443/x", undefined],
      ["https://10.0.0.1/x", undefined],
      ["https://10.0.0.10/x", "http://proxy:3128"],
      ["http://example.com/x", undefined],
    ];
    expect(table.map(([u]) => [u, proxyFor(new URL(u), env)])).toEqual(table);
    expect(proxyFor(new URL("http://example.com/x"), { HTTP_PROXY: "http://p:1" })).toBe("http://p:1");
    expect(proxyFor(new URL("https://example.com/x"), { HTTP_PROXY: "http://p:1", NO_PROXY: "*" })).toBeUndefined();
  });
});

describe("where the cache is", () => {
  it("XDG_CACHE_HOME, else ~/.cache; under sudo the invoking user's home, and their files", () => {
    expect(imageCacheLocation({ XDG_CACHE_HOME: "/x/cache", HOME: "/home/me" }, 1000)).toEqual({ dir: "/x/cache/pibake/images" });
    expect(imageCacheLocation({ HOME: "/home/me" }, 1000)).toEqual({ dir: "/home/me/.cache/pibake/images" });
    const sudo = { HOME: "/root", SUDO_USER: "me", SUDO_UID: "1000", SUDO_GID: "1001" };
    expect(imageCacheLocation(sudo, 0, (u) => (u === "me" ? "/home/me" : undefined))).toEqual({
      dir: "/home/me/.cache/pibake/images",
      owner: { uid: 1000, gid: 1001 },
    });
    expect(imageCacheLocation({ ...sudo, XDG_CACHE_HOME: "/home/me/.xdg" }, 0, () => "/home/me")).toEqual({
      dir: "/home/me/.xdg/pibake/images",
      owner: { uid: 1000, gid: 1001 },
    });
    // sudo to root from root, or a user unknown to the system: root's own cache.
    expect(imageCacheLocation({ ...sudo, SUDO_USER: "root", SUDO_UID: "0" }, 0, () => "/home/me")).toEqual({ dir: "/root/.cache/pibake/images" });
    expect(imageCacheLocation(sudo, 0, () => undefined)).toEqual({ dir: "/root/.cache/pibake/images" });
  });

  it("the list URL: the option, else PIBAKE_OS_LIST_URL, else Raspberry Pi's", () => {
    expect(listUrlOf({ listUrl: "http://a/l.json" }, { PIBAKE_OS_LIST_URL: "http://b/l.json" })).toBe("http://a/l.json");
    expect(listUrlOf({}, { PIBAKE_OS_LIST_URL: "http://b/l.json" })).toBe("http://b/l.json");
    expect(listUrlOf({}, {})).toBe("https://downloads.raspberrypi.com/os_list_imagingutility_v4.json");
  });

  it("the real getent finds root's home", async () => {
    const { homeOf } = await import("../src/official/cache.js");
    expect(homeOf("root")).toBe((await execa("getent", ["passwd", "root"])).stdout.split(":")[5]);
  });
});

describe("progress lines", () => {
  it("formats a line with size, share, speed and time left, and prints plain lines sparsely", () => {
    const p: ImageProgress = {
      phase: "download",
      fileName: "x.img.xz",
      done: 100 << 20,
      total: 400 << 20,
      bytesPerSecond: 10 << 20,
      etaSeconds: 30,
      resumedFrom: 50 << 20,
    };
    expect(formatImageProgress(p)).toBe("downloading x.img.xz: 100.0 MiB of 400.0 MiB (25%), 10.0 MiB/s, 30s left, resumed at 50.0 MiB");
    expect(formatImageProgress({ phase: "check", fileName: "x.img.xz", done: 2048 })).toBe("checking x.img.xz: 2.0 KiB");
    const lines: string[] = [];
    let t = 0;
    const print = plainProgressPrinter(
      (l) => lines.push(l),
      10_000,
      () => t,
    );
    for (const [at, done] of [
      [0, 0],
      [1000, 10],
      [9000, 20],
      [10_500, 30],
      [11_000, 400 << 20],
    ] as const) {
      t = at;
      print({ ...p, done, etaSeconds: undefined, bytesPerSecond: undefined, resumedFrom: undefined });
    }
    expect(lines.map((l) => l.split(": ")[1]!.split(" of")[0])).toEqual(["0 B", "30 B", "400.0 MiB"]);
  });
});

describe("pibake images", () => {
  it("fetch downloads and verifies the official image into the cache, without root; a second fetch takes it from there", async () => {
    const xdg = path.join(cache.dir, "xdg");
    // The tests run offline (vitest.config.ts); the list here is local.
    const env = { XDG_CACHE_HOME: xdg, PIBAKE_OFFLINE: "0" };
    const img = images[BOOKWORM_ARM64]!;
    const r = await pibake(["images", "fetch", "--release", "bookworm", "--os-list", `${server.base}/os_list.json`], { env });
    expect(r.exitCode, r.stderr).toBe(0);
    const file = path.join(xdg, "pibake", "images", img.downloadSha256, "2025-12-04-raspios-bookworm-arm64-lite.img.xz");
    expect(r.stdout.trim()).toBe(
      `2025-12-04-raspios-bookworm-arm64-lite.img.xz (bookworm/arm64 2025-12-04), sha256 ${img.downloadSha256}, downloaded and verified: ${file}`,
    );
    expect(readFileSync(file)).toEqual(img.xz);
    const again = await pibake(["images", "fetch", "--release", "bookworm", "--os-list", `${server.base}/os_list.json`], { env });
    expect(again.stdout).toContain("already in the cache");
    expect(server.imageRequests()).toHaveLength(1);
    for (const [bad, why] of [
      [["--arch", "x86"], "--arch x86: use arm64 or armhf"],
      [["--date", "2025"], "YYYY-MM-DD"],
    ] as const) {
      const e = await pibake(["images", "fetch", ...bad], { env });
      expect(e.exitCode).toBe(2);
      expect(e.stderr).toContain(why);
    }
  });

  it("lists cached images with the newest per release/arch, prunes the rest, and prune --all empties the cache", async () => {
    const xdg = path.join(cache.dir, "xdg");
    const dir = path.join(xdg, "pibake", "images");
    for (const o of [{}, { date: "2025-11-24" }, { release: "bookworm" as const }]) await resolveOfficialImage(opts({ cacheDir: dir, ...o }));
    const env = { XDG_CACHE_HOME: xdg };

    const list = await pibake(["images", "list"], { env });
    expect(list.exitCode).toBe(0);
    const lines = list.stdout.split("\n");
    expect(lines[0]).toBe(`official images in ${dir}:`);
    expect(
      lines.slice(1, 4).map((l) =>
        l
          .replace(/\s+/g, " ")
          .trim()
          .replace(/ verified \S+$/, ""),
      ),
    ).toEqual([
      expect.stringMatching(/^bookworm\/arm64 2025-12-04 [\d.]+ KiB 2025-12-04-raspios-bookworm-arm64-lite\.img\.xz \(newest\)$/),
      expect.stringMatching(/^trixie\/arm64 2025-12-04 [\d.]+ KiB 2025-12-04-raspios-trixie-arm64-lite\.img\.xz \(newest\)$/),
      expect.stringMatching(/^trixie\/arm64 2025-11-24 [\d.]+ KiB 2025-11-24-raspios-trixie-arm64-lite\.img\.xz$/),
    ]);
    expect(lines.at(-1)).toMatch(/^total: [\d.]+ (KiB|MiB)$/);

    const older = images[TRIXIE_ARM64_OLDER]!;
    const prune = await pibake(["images", "prune"], { env });
    expect(prune.exitCode).toBe(0);
    expect(prune.stdout).toMatch(/^removed 2025-11-24-raspios-trixie-arm64-lite\.img\.xz \(trixie\/arm64 2025-11-24\): [\d.]+ KiB$/m);
    expect(prune.stdout).toMatch(/^freed [\d.]+ KiB in /m);
    expect(existsSync(path.join(dir, older.downloadSha256))).toBe(false);
    expect(
      readCache(dir)
        .images.map((i) => i.fileName)
        .sort(),
    ).toEqual(["2025-12-04-raspios-bookworm-arm64-lite.img.xz", "2025-12-04-raspios-trixie-arm64-lite.img.xz"]);

    const all = await pibake(["images", "prune", "--all"], { env });
    expect(all.exitCode).toBe(0);
    expect(all.stdout.match(/^removed /gm)).toHaveLength(2);
    expect((await pibake(["images", "list"], { env })).stdout.trim()).toBe(`no official images cached in ${dir}`);

    for (const bad of [["images"], ["images", "show"], ["images", "list", "--all"], ["images", "list", "--release", "trixie"], ["images", "fetch", "--all"]]) {
      const r = await pibake(bad, { env });
      expect(r.exitCode, bad.join(" ")).toBe(2);
      expect(r.stderr).toMatch(/^pibake: (images needs an action: "list", "prune" or "fetch"|--all goes with prune|--release goes with fetch)/);
    }
  });
});
