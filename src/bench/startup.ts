/**
 * `npm run bench`, start-up section: whole-process wall time (median of a few
 * runs, round-robin) of a bare `node -e 0`, `pibake --version`, `pibake --help`,
 * a warm `pibake render` of examples/broker.json (state directory kept from an
 * earlier render) and a first render (new state directory: new CA and keys),
 * each against `node -e 0` measured in the same run. With
 * PIBAKE_BENCH_BASELINE set to another checkout's bin/pibake.js (built), its
 * two renders are measured in the same rounds and shown beside pibake's: before
 * and after a change, in one run. On Linux each case's CPU time (user + sys, from
 * /proc: 10 ms steps) is shown too: on a busy machine it moves less than wall time.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../paths.js";

/** The example's secrets: two from the environment, one from a file beside the config. */
const ENV = {
  PIBAKE_USER_PASSWORD: "bench-User-Passw0rd",
  PIBAKE_MQTT_SENSORS_PASSWORD: "bench-Sensors-Secret-1",
  FREEMYIP_TOKEN: "benchDdnsToken12345",
  // The first render would ask the npm registry for Node-RED's versions: the pinned ones keep the network out of the figure.
  PIBAKE_OFFLINE: "1",
  CI: "true",
};

interface Case {
  name: string;
  args: (run: number) => string[];
  /** The goal, as the most time above or the largest ratio to `node -e 0`. */
  goal?: { overMs?: number; ratio?: number };
  /** The baseline checkout's case that this one is shown beside. */
  baseline?: string;
}

/** CPU time (user + sys, ms) of this process's finished children, from /proc (Linux; undefined elsewhere). */
function childrenCpuMs(): number | undefined {
  try {
    const fields = readFileSync("/proc/self/stat", "utf8")
      .replace(/^.*\) /s, "")
      .split(" ");
    // After "pid (comm) ": state is field 3, cutime 16 and cstime 17, in clock ticks (USER_HZ, 100 on Linux).
    return (Number(fields[13]) + Number(fields[14])) * 10;
  } catch {
    return undefined;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function timeRun(args: string[], env: NodeJS.ProcessEnv): { wall: number; cpu?: number } {
  const cpu0 = childrenCpuMs();
  const t = performance.now();
  const r = spawnSync(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8", timeout: 120_000 });
  const wall = performance.now() - t;
  const cpu1 = childrenCpuMs();
  if (r.status !== 0) throw new Error(`node ${args.join(" ")} exited with ${r.status ?? r.signal}:\n${String(r.stderr).split("\n").slice(-10).join("\n")}`);
  return cpu0 !== undefined && cpu1 !== undefined ? { wall, cpu: cpu1 - cpu0 } : { wall };
}

export async function benchStartup(runs = Number(process.env.PIBAKE_BENCH_STARTUP_RUNS ?? 5)): Promise<string[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pibake-bench-startup-"));
  try {
    const config = path.join(dir, "broker.json");
    copyFileSync(path.join(packageRoot, "examples/broker.json"), config);
    mkdirSync(path.join(dir, "secrets"));
    writeFileSync(path.join(dir, "secrets/mqtt-phone.txt"), "bench-Phone-Secret-2\n");
    const env = { ...process.env, ...ENV };
    const baseline = process.env.PIBAKE_BENCH_BASELINE;
    const cases = startupCases(dir, config, baseline, env);
    const timed = timeCases(cases, runs, env);
    return [
      `median wall time of ${runs} runs (whole process, round-robin), min–max; examples/broker.json, secrets from the environment, PIBAKE_OFFLINE=1${baseline ? `; baseline ${baseline}` : ""}:`,
      ...reportCases(cases, timed, runs),
      `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, load average ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")} at the end`,
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The cases, `node -e 0` first; their warm states made beforehand (one render makes the CA, keys and hashes, and fills the file cache). */
function startupCases(dir: string, config: string, baseline: string | undefined, env: NodeJS.ProcessEnv): Case[] {
  const bin = path.join(packageRoot, "bin/pibake.js");
  const warmState = path.join(dir, "state-warm");
  const baselineWarmState = path.join(dir, "state-baseline-warm");
  const renderWith = (pibake: string, state: string, out: string) => [pibake, "render", config, "--state", state, "--out", path.join(dir, out)];
  const render = (state: string, out: string) => renderWith(bin, state, out);
  const cases: Case[] = [
    { name: "node -e 0", args: () => ["-e", "0"] },
    { name: "pibake --version", args: () => [bin, "--version"], goal: { ratio: 1.5 } },
    { name: "pibake --help", args: () => [bin, "--help"], goal: { ratio: 1.5 } },
    { name: "pibake render (warm)", args: (i) => render(warmState, `warm-${i}`), goal: { overMs: 300 }, baseline: "baseline render (warm)" },
    {
      name: "pibake render (first, new CA)",
      args: (i) => render(path.join(dir, `state-${i}`), `first-${i}`),
      goal: { overMs: 1000 },
      baseline: "baseline render (first, new CA)",
    },
    ...(baseline
      ? [
          { name: "baseline render (warm)", args: (i: number) => renderWith(baseline, baselineWarmState, `baseline-warm-${i}`) },
          {
            name: "baseline render (first, new CA)",
            args: (i: number) => renderWith(baseline, path.join(dir, `baseline-state-${i}`), `baseline-first-${i}`),
          },
        ]
      : []),
  ];
  timeRun(render(warmState, "warm-setup"), env);
  timeRun([bin, "--version"], env);
  if (baseline) timeRun(renderWith(baseline, baselineWarmState, "baseline-warm-setup"), env);
  return cases;
}

interface Timed {
  wall: Map<string, number[]>;
  cpu: Map<string, number[]>;
}

/** Every case once per round, round-robin, so that the machine's load falls on all alike. */
function timeCases(cases: readonly Case[], runs: number, env: NodeJS.ProcessEnv): Timed {
  const timed: Timed = { wall: new Map(cases.map((c) => [c.name, []])), cpu: new Map(cases.map((c) => [c.name, []])) };
  for (let i = 0; i < runs; i++) {
    for (const c of cases) {
      const t = timeRun(c.args(i), env);
      timed.wall.get(c.name)!.push(t.wall);
      if (t.cpu !== undefined) timed.cpu.get(c.name)!.push(t.cpu);
    }
  }
  return timed;
}

/** One line per case: its median and spread, against `node -e 0`, its CPU time, its goal, and its baseline beside it. */
function reportCases(cases: readonly Case[], timed: Timed, runs: number): string[] {
  const base = median(timed.wall.get(cases[0]!.name)!);
  const cpuOf = (name: string) => (timed.cpu.get(name)!.length === runs ? median(timed.cpu.get(name)!) : undefined);
  const baseCpu = cpuOf(cases[0]!.name);
  const width = Math.max(...cases.map((c) => c.name.length));
  return cases.map((c) => {
    const all = timed.wall.get(c.name)!;
    const ms = median(all);
    const spread = `${Math.min(...all).toFixed(0)}–${Math.max(...all).toFixed(0)}`;
    let verdict = "";
    if (c.goal?.ratio !== undefined) verdict = `goal ≤ ${c.goal.ratio}×: ${ms / base <= c.goal.ratio ? "met" : "NOT met"}`;
    if (c.goal?.overMs !== undefined) verdict = `goal ≤ +${c.goal.overMs} ms: ${ms - base <= c.goal.overMs ? "met" : "NOT met"}`;
    const against = c === cases[0] ? "" : `${(ms / base).toFixed(2)}×, +${(ms - base).toFixed(0).padStart(4)} ms`;
    const cpu = cpuOf(c.name);
    const cpuText =
      cpu === undefined || baseCpu === undefined ? "" : `cpu ${cpu.toFixed(0).padStart(4)} ms${c === cases[0] ? "" : ` (+${(cpu - baseCpu).toFixed(0)})`}`;
    const baselineMs = c.baseline && timed.wall.has(c.baseline) ? median(timed.wall.get(c.baseline)!) : undefined;
    const beside = baselineMs !== undefined ? `baseline ${baselineMs.toFixed(0)} ms, +${(baselineMs - base).toFixed(0)}` : "";
    return `  ${c.name.padEnd(width)}  ${ms.toFixed(0).padStart(5)} ms  ${spread.padStart(11)}  ${against.padEnd(20)}  ${cpuText.padEnd(19)}  ${verdict}${beside ? `; ${beside}` : ""}`.trimEnd();
  });
}
