import { failed, ok, warning, type Budget, type CheckResult } from "./result.js";
import { describe, within } from "./net.js";

async function get(url: string, ms: number): Promise<{ status: number; body: string }> {
  const res = await within(`GET ${url}`, ms, fetch(url, { signal: AbortSignal.timeout(ms), redirect: "manual", headers: { accept: "application/json" } }));
  return { status: res.status, body: await within(`reading ${url}`, ms, res.text()) };
}

/**
 * Node-RED's editor answers and asks for a login: its admin API tells a
 * client how to log in at /auth/login (a "credentials" or "strategy" prompt)
 * and refuses /flows without a token. Without adminAuth it would say {} and serve the flows.
 */
export async function checkNodeRed(host: string, address: string, port: number, lan: boolean, buildCommand: string, budget: Budget): Promise<CheckResult[]> {
  const base = `http://${address.includes(":") ? `[${address}]` : address}:${port}`;
  const where = `${host}:${port}`;
  let login: { status: number; body: string };
  try {
    login = await get(`${base}/auth/login`, budget.ms);
  } catch (err) {
    const detail = `the editor at ${where} does not answer: ${describe(err)}`;
    // From outside the home network the editor is normally out of reach: only the MQTT TLS port is forwarded.
    return [
      lan
        ? failed("node-red", detail, "on the Pi: systemctl status nodered (a first-boot install takes some minutes after the first start)")
        : warning("node-red", `${detail}; from outside the home network that is expected`, "check from home with --lan"),
    ];
  }
  let prompt: { type?: string } = {};
  try {
    prompt = JSON.parse(login.body) as { type?: string };
  } catch {
    // Not Node-RED's admin API: decided by /flows below.
  }
  if (login.status === 200 && (prompt.type === "credentials" || prompt.type === "strategy"))
    return [ok("node-red", `the editor at ${where} answers and asks for a login (${prompt.type})`)];
  let flows: { status: number };
  try {
    flows = await get(`${base}/flows`, budget.ms);
  } catch (err) {
    return [failed("node-red", `${where}/auth/login answered HTTP ${login.status} without a login prompt, and /flows: ${describe(err)}`)];
  }
  if (flows.status === 401) return [ok("node-red", `the editor at ${where} refuses its admin API without a login (HTTP 401)`)];
  if (flows.status === 200)
    return [
      failed(
        "node-red",
        `the editor at ${where} serves its flows without a login`,
        `build a new image (${buildCommand}): pibake's Node-RED settings have adminAuth`,
      ),
    ];
  return [
    failed(
      "node-red",
      `${where} answers, but not like Node-RED's editor (/auth/login HTTP ${login.status}, /flows HTTP ${flows.status})`,
      `is nodeRed.port ${port} the editor's port?`,
    ),
  ];
}
