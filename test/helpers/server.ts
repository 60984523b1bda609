import { spawn } from "node:child_process";

/**
 * A server process for a test: its output collected, ready once `ready` shows in it (within `ms`,
 * else stopped and an error made by `failure`), stopped with `stopWith` and SIGKILL after 10 s.
 */
export async function startServer(cmd: string, args: string[], o: { ready: RegExp; ms: number; stopWith: NodeJS.Signals; failure: (log: string) => string }) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stdout!.on("data", (d: Buffer) => (log += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(o.stopWith);
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(killer);
  };
  const deadline = Date.now() + o.ms;
  while (!o.ready.test(log) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (!o.ready.test(log)) {
    await stop();
    throw new Error(o.failure(log));
  }
  return { stop, log: () => log };
}
