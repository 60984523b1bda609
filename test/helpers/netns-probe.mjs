// Run by test/helpers/netns.ts inside a network namespace (`ip netns exec NS node netns-probe.mjs JSON`):
// the clients and plain listeners the firewall tests need there. Node's sockets cannot change
// namespace, so each namespace gets a process of its own. Every wait is bounded by the caller's
// timeoutMs. Output: one JSON line per result on stdout.
import net from "node:net";
import readline from "node:readline";
import mqtt from "mqtt";

const req = JSON.parse(process.argv[2]);
const print = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);

/** One TCP connection attempt: "connected", "refused" (RST or ICMP unreachable) or "timeout" (dropped). */
function tcpOnce(host, port, timeoutMs, localAddress) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    const done = (r) => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done("timeout"), timeoutMs);
    s.once("connect", () => done("connected"));
    s.once("error", (e) => done(e.code === "ECONNREFUSED" || e.code === "EHOSTUNREACH" ? "refused" : `error ${e.code ?? e.message}`));
  });
}

function mqttConnect(o) {
  return new Promise((resolve) => {
    const client = mqtt.connect(o.url, {
      reconnectPeriod: 0,
      connectTimeout: o.timeoutMs,
      username: o.username,
      password: o.password,
      clientId: o.clientId,
      ...(o.ca ? { ca: o.ca, servername: o.servername, rejectUnauthorized: true } : {}),
      ...(o.localAddress ? { localAddress: o.localAddress } : {}),
    });
    const timer = setTimeout(() => settle("timeout"), o.timeoutMs);
    let settled = false;
    function settle(r) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (r !== "connected") client.end(true);
      resolve({ result: r, client });
    }
    client.once("connect", () => settle("connected"));
    client.once("error", (e) => settle(e.code === 5 || e.code === 134 || e.code === 135 ? "not authorised" : `error ${e.code ?? ""} ${e.message}`));
    client.once("close", () => settle("closed"));
  });
}

switch (req.op) {
  case "tcp": {
    const results = [];
    for (let i = 0; i < (req.count ?? 1); i++) results.push(await tcpOnce(req.host, req.port, req.timeoutMs, req.localAddress));
    print(results);
    break;
  }
  case "mqtt": {
    const results = [];
    for (let i = 0; i < (req.count ?? 1); i++) {
      const { result, client } = await mqttConnect(req);
      results.push(result);
      if (result === "connected") await client.endAsync();
    }
    print(results);
    break;
  }
  case "mqtt-hold": {
    // Connects once, then answers each "roundtrip" line on stdin with "ok" or "lost" (publish to
    // itself and wait for the message); ends when stdin closes.
    const { result, client } = await mqttConnect(req);
    print(result);
    if (result !== "connected") process.exit(0);
    const topic = `probe/${process.pid}`;
    const got = [];
    client.on("message", (_t, p) => got.push(p.toString()));
    await client.subscribeAsync(topic, { qos: 1 });
    const lines = readline.createInterface({ input: process.stdin });
    let n = 0;
    for await (const line of lines) {
      if (line !== "roundtrip") continue;
      const payload = `m${++n}`;
      const deadline = Date.now() + req.timeoutMs;
      client.publish(topic, payload, { qos: 1 });
      while (!got.includes(payload) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      print(got.includes(payload) ? "ok" : "lost");
    }
    client.end(true);
    break;
  }
  case "listen": {
    // Plain TCP listeners standing for services whose own protocol is not the point (SSH, Node-RED).
    const sockets = new Set();
    await Promise.all(
      req.ports.map(
        (port) =>
          new Promise((resolve, reject) => {
            const srv = net.createServer((s) => {
              sockets.add(s);
              s.on("error", () => undefined);
              s.on("close", () => sockets.delete(s));
            });
            srv.once("error", reject);
            srv.listen({ port, host: "::", ipv6Only: false }, resolve);
          }),
      ),
    );
    print("listening");
    process.stdin.resume();
    process.stdin.on("end", () => process.exit(0));
    break;
  }
  default:
    throw new Error(`unknown op ${req.op}`);
}
