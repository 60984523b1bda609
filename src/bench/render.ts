import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadConfig } from "../config/load.js";
import { prepareSecrets, StateDir } from "../secrets/index.js";
import { render } from "../render/index.js";
import { writeRendered } from "../render/write.js";

const CONFIG = {
  image: { name: "bench" },
  user: { name: "admin", password: { env: "BENCH_PW" }, passwordSsh: true },
  network: { address: "192.168.1.10/24", gateway: "192.168.1.1" },
  mqtt: { users: [{ name: "u1", password: { env: "BENCH_PW" }, topics: [{ access: "readwrite", topic: "home/#" }] }] },
  tls: { domain: "bench.freemyip.com" },
  ddns: { provider: "freemyip", token: { env: "BENCH_PW" } },
  nodeRed: { enabled: false },
};

/** The render step: first render (makes the CA and keys) and a repeat render (reuses them). */
export async function benchRender(runs = 10): Promise<string[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pibake-bench-render-"));
  try {
    const cfg = path.join(dir, "c.json");
    writeFileSync(cfg, JSON.stringify(CONFIG));
    const env = { BENCH_PW: "bench-password-123" };
    const once = async (i: number) => {
      const t = performance.now();
      const { model } = loadConfig(cfg, env);
      const secrets = await prepareSecrets(model, new StateDir(path.join(dir, "state")));
      writeRendered(path.join(dir, `out${i}`), await render(model, secrets));
      return performance.now() - t;
    };
    const first = await once(0);
    const repeats: number[] = [];
    for (let i = 1; i <= runs; i++) repeats.push(await once(i));
    repeats.sort((a, b) => a - b);
    const median = repeats[Math.floor(repeats.length / 2)]!;
    return [
      `render, first (new CA RSA-3072 + server key RSA-2048, native keygen): ${first.toFixed(0)} ms`,
      `render, repeat (state reused), median of ${runs}: ${median.toFixed(1)} ms`,
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
