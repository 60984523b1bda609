import { existsSync, mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./helpers/net.js";
import { pibake, secretEnv, tempDir, validConfig, writeJson } from "./helpers/cli.js";
import { npmView, PINNED, REGISTRY_WAIT_MS, resolveNodeRedVersions } from "../src/registry/node-red.js";
import { StateDir } from "../src/secrets/state.js";

/**
 * The npm registry look-up of Node-RED's versions, through the real npm
 * pointed at local servers with npm_config_registry (as npm users set it):
 * one that accepts and never answers, a port that refuses, and one that
 * answers as the registry does.
 */

const tmp = tempDir("pibake-registry-");
const sockets = new Set<net.Socket>();
let silent: net.Server;
let answering: http.Server;
let urls: { silent: string; refused: string; answering: string };
const asked: string[] = [];

beforeAll(async () => {
  silent = net.createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  answering = http.createServer((req, res) => {
    const name = decodeURIComponent((req.url ?? "/").slice(1));
    asked.push(name);
    const versions = { "4.1.13": { name, version: "4.1.13", engines: { node: ">=18.5" }, dist: { tarball: "http://127.0.0.1/x.tgz", shasum: "0" } } };
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ name, "dist-tags": { latest: "4.1.13" }, versions, time: { "4.1.13": "2025-01-01T00:00:00.000Z" } }));
  });
  const listen = (s: net.Server) => new Promise<number>((resolve) => s.listen(0, "127.0.0.1", () => resolve((s.address() as net.AddressInfo).port)));
  urls = {
    silent: `http://127.0.0.1:${await listen(silent)}/`,
    refused: `http://127.0.0.1:${await freePort()}/`,
    answering: `http://127.0.0.1:${await listen(answering)}/`,
  };
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((r) => silent?.close(r));
  await new Promise((r) => answering?.close(r));
  tmp.cleanup();
});

function withRegistry<T>(url: string, fn: () => Promise<T>): Promise<T> {
  const before = process.env.npm_config_registry;
  process.env.npm_config_registry = url;
  return fn().finally(() => {
    if (before === undefined) delete process.env.npm_config_registry;
    else process.env.npm_config_registry = before;
  });
}

describe("the npm registry look-up", () => {
  for (const kind of ["silent", "refused"] as const) {
    it(`ends within ${REGISTRY_WAIT_MS / 1000} s when the registry ${kind === "silent" ? "accepts and never answers" : "refuses"}, and records nothing`, {
      timeout: 60_000,
    }, async () => {
      const state = new StateDir(path.join(tmp.dir, `state-${kind}`));
      const asking: string[] = [];
      const started = Date.now();
      const r = await withRegistry(urls[kind], () =>
        resolveNodeRedVersions(
          state,
          { release: "trixie", dashboard: "@flowfuse/node-red-dashboard" },
          { lookup: npmView, offline: false, onAsking: (pkg) => asking.push(pkg) },
        ),
      );
      const ms = Date.now() - started;
      // The bound, plus the time to stop npm.
      expect(ms).toBeLessThan(REGISTRY_WAIT_MS + 2000);
      expect(r.versions.nodeRed).toEqual({ package: "node-red", version: PINNED["node-red"], source: "fallback" });
      expect(r.versions.dashboard?.source).toBe("fallback");
      expect(r.failure).toMatch(kind === "silent" ? /^no answer within 10 s$/ : /ECONNREFUSED/);
      // Once the registry failed, the dashboard is not asked for.
      expect(asking).toEqual(["node-red"]);
      expect(existsSync(state.file("node-red-versions.json"))).toBe(false);
    });
  }

  it("render says what it waits for and what it falls back to, and the next render with a registry that answers asks again", { timeout: 120_000 }, async () => {
    const dir = path.join(tmp.dir, "render");
    mkdirSync(dir);
    const cfg = writeJson(path.join(dir, "broker.json"), validConfig());
    const state = path.join(dir, "state");
    const env = { ...secretEnv, PIBAKE_OFFLINE: "0" };
    const started = Date.now();
    const offline = await pibake(["render", cfg, "--out", path.join(dir, "out1"), "--state", state], { env: { ...env, npm_config_registry: urls.silent } });
    const ms = Date.now() - started;
    expect(offline.exitCode, offline.stderr).toBe(0);
    expect(offline.stdout).toMatch(/asking the npm registry for node-red \(at most 10 s; PIBAKE_OFFLINE=1 skips it\)/);
    expect(offline.stdout).toMatch(
      new RegExp(
        `the npm registry gave no answer \\(no answer within 10 s, [\\d.]+s\\): using node-red ${PINNED["node-red"]} \\(fallback\\), @flowfuse/node-red-dashboard ${PINNED["@flowfuse/node-red-dashboard"]} \\(fallback\\), not recorded, so the next render asks again; set PIBAKE_OFFLINE=1 to not ask`,
      ),
    );
    // Before: about 2 minutes. The render's own work (hashes, the CA) comes on top of the bound.
    expect(ms).toBeLessThan(40_000);
    expect(existsSync(path.join(state, "node-red-versions.json"))).toBe(false);

    const online = await pibake(["render", cfg, "--out", path.join(dir, "out2"), "--state", state], { env: { ...env, npm_config_registry: urls.answering } });
    expect(online.exitCode, online.stderr).toBe(0);
    expect(asked).toEqual(["node-red", "@flowfuse/node-red-dashboard"]);
    expect(online.stdout).toMatch(/node-red 4\.1\.13 \(registry\), @flowfuse\/node-red-dashboard 4\.1\.13 \(registry\): asked the npm registry/);
    expect(JSON.parse(readFileSync(path.join(state, "node-red-versions.json"), "utf8")).nodeRed).toEqual({
      package: "node-red",
      version: "4.1.13",
      source: "registry",
    });

    // Recorded now: a third render repeats it without asking.
    const again = await pibake(["render", cfg, "--out", path.join(dir, "out3"), "--state", state], { env: { ...env, npm_config_registry: urls.refused } });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/as recorded in the state directory/);
    expect(asked).toHaveLength(2);
  });
});
