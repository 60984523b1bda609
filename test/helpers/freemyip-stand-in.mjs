// freemyip.com as the Pi's lego meets it, for test/acme.test.ts; run inside the test's network
// namespace (`ip netns exec NS node freemyip-stand-in.mjs JSON`), where /etc/hosts sends
// freemyip.com and its name server to 127.0.0.1.
//
// The update API (HTTPS on 443, a certificate for freemyip.com from the test's root). Source:
// freemyip's API page, https://freemyip.com/help (as linked by github.com/nrdcg/freemyip, the
// client lego 4.9.1 uses); the request is the one that client sends:
//   GET /update?token=TOKEN&domain=NAME.freemyip.com[&txt=VALUE][&verbose=yes]
// lego's client, acme.sh's dns_freemyip and pibake's hook pass the challenge's own name as domain
// (_acme-challenge.NAME.freemyip.com) and txt=null to remove the record. One TXT record per
// name: a new value replaces the old. The answer is text/plain: "OK" (with verbose, more lines
// after it) or "ERROR" and a reason. What a cert-manager webhook for freemyip measured against
// the live API, and this stand-in does too: the record goes to _acme-challenge.<the token's own
// name> whatever domain= says, and a refused token is quoted back in the answer ("ERROR
// Requested token doesn't exist: TOKEN"), which is also how freemyip answers calls that come
// within about a second of each other.
// The record is put into pebble-challtestsrv through its management API (POST /set-txt,
// /clear-txt), from where pebble's validation reads it.
//
// The name server (UDP and TCP 53): what lego's propagation check asks of freemyip's authoritative
// servers. It answers SOA and NS for freemyip.com itself (challtestsrv answers SOA with NOTIMP,
// which lego takes for an error) and passes every other question to challtestsrv.
//
// Commands on stdin, one a line: "mode ok" (set the record), "mode refuse" (the token is
// refused), "mode no-txt" (answer OK but set nothing). Each update request is reported on
// stdout as a JSON line, with whether the token matched instead of the token.
import dgram from "node:dgram";
import { readFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import readline from "node:readline";

const cfg = JSON.parse(process.argv[2]);
const print = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);
const token = readFileSync(cfg.tokenFile, "utf8").trim();
let mode = "ok";
readline.createInterface({ input: process.stdin }).on("line", (l) => {
  const m = /^mode (ok|refuse|no-txt)$/.exec(l.trim());
  if (m) mode = m[1];
  print({ mode });
});

async function challtestsrv(op, body) {
  const r = await fetch(`http://${cfg.challtestsrv}/${op}`, { method: "POST", body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`challtestsrv ${op}: HTTP ${r.status}`);
}

const api = https.createServer({ cert: readFileSync(cfg.cert), key: readFileSync(cfg.key) }, async (req, res) => {
  const url = new URL(req.url ?? "/", "https://freemyip.com");
  const domain = (url.searchParams.get("domain") ?? "").toLowerCase();
  const txt = url.searchParams.get("txt");
  const tokenOk = url.searchParams.get("token") === token;
  const answer = (text) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${text}\n`);
  };
  print({ path: url.pathname, domain, txt, tokenOk, verbose: url.searchParams.get("verbose"), mode });
  if (url.pathname !== "/update") return answer("ERROR\nbad request");
  // As the live API does (see above): a refused token is quoted back.
  if (!tokenOk || mode === "refuse") return answer(`ERROR\nRequested token doesn't exist: ${url.searchParams.get("token")}`);
  if (txt === null) return answer("OK");
  try {
    // The token's own name decides where the record goes, whatever domain= says (see above).
    const host = `_acme-challenge.${cfg.domain}.`;
    if (mode === "ok") await challtestsrv(txt === "null" ? "clear-txt" : "set-txt", { host, ...(txt === "null" ? {} : { value: txt }) });
    answer(url.searchParams.get("verbose") === "yes" ? `OK\n${txt === "null" ? "TXT record removed" : "TXT record set"}` : "OK");
  } catch (err) {
    answer(`ERROR\n${err.message}`);
  }
});

/** One question's name and type, and where the question ends. */
function question(msg) {
  const labels = [];
  let i = 12;
  while (msg[i] !== 0) {
    labels.push(msg.subarray(i + 1, i + 1 + msg[i]).toString("ascii"));
    i += 1 + msg[i];
  }
  return { name: labels.join(".").toLowerCase(), type: msg.readUInt16BE(i + 1), end: i + 5 };
}

function encodeName(name) {
  return Buffer.concat([...name.split(".").filter(Boolean).map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0])]);
}

function rr(type, rdata) {
  const head = Buffer.alloc(10);
  head.writeUInt16BE(type, 0);
  head.writeUInt16BE(1, 2);
  head.writeUInt32BE(60, 4);
  head.writeUInt16BE(rdata.length, 8);
  return Buffer.concat([Buffer.from([0xc0, 0x0c]), head, rdata]);
}

/** SOA and NS of freemyip.com, answered here, authoritatively; for names below it, no such record. */
function zoneAnswer(msg, q) {
  let record;
  if (q.name !== cfg.zone) record = Buffer.alloc(0);
  else if (q.type === 6) {
    const nums = Buffer.alloc(20);
    [1, 3600, 600, 86400, 60].forEach((n, k) => nums.writeUInt32BE(n, k * 4));
    record = rr(6, Buffer.concat([encodeName(cfg.nameServer), encodeName(`hostmaster.${cfg.zone}`), nums]));
  } else record = rr(2, encodeName(cfg.nameServer));
  const header = Buffer.from(msg.subarray(0, 12));
  header[2] = 0x84 | (msg[2] & 0x01);
  header[3] = 0x80;
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(record.length ? 1 : 0, 6);
  header.writeUInt16BE(0, 8);
  header.writeUInt16BE(0, 10);
  return Buffer.concat([header, msg.subarray(12, q.end), record]);
}

/** The answer to one DNS message: SOA and NS of the zone from here, every other question from challtestsrv (over UDP). */
function answerDns(msg) {
  let q;
  try {
    q = question(msg);
  } catch {
    return Promise.resolve(undefined);
  }
  if ((q.name === cfg.zone || q.name.endsWith(`.${cfg.zone}`)) && (q.type === 6 || q.type === 2)) return Promise.resolve(zoneAnswer(msg, q));
  return new Promise((resolve) => {
    const upstream = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      upstream.close();
      resolve(undefined);
    }, 3000);
    upstream.on("message", (reply) => {
      clearTimeout(timer);
      upstream.close();
      resolve(reply);
    });
    const [host, port] = cfg.challtestsrvDns.split(":");
    upstream.send(msg, Number(port), host);
  });
}

const dns = dgram.createSocket("udp4");
dns.on("message", async (msg, from) => {
  const reply = await answerDns(msg);
  if (reply) dns.send(reply, from.port, from.address);
});

// The same over TCP (RFC 1035 4.2.2: each message after its length in two bytes), and so on a
// Unix socket (cfg.dnsSocket) too: the way in from outside the namespace, for
// test/slow/boot-acme.test.ts, which passes its QEMU guest's questions on.
const onDnsStream = (conn) => {
  let buffered = Buffer.alloc(0);
  // One message after another, in the order they came.
  let answered = Promise.resolve();
  conn.on("error", () => conn.destroy());
  conn.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
      const msg = buffered.subarray(2, 2 + buffered.readUInt16BE(0));
      buffered = buffered.subarray(2 + msg.length);
      answered = answered.then(async () => {
        const reply = await answerDns(msg);
        if (!reply) return;
        const len = Buffer.alloc(2);
        len.writeUInt16BE(reply.length);
        conn.write(Buffer.concat([len, reply]));
      });
    }
  });
};
const dnsTcp = net.createServer(onDnsStream);

await new Promise((resolve, reject) => {
  api.once("error", reject);
  api.listen(443, "127.0.0.1", resolve);
});
await new Promise((resolve, reject) => {
  dns.once("error", reject);
  dns.bind(53, "127.0.0.1", resolve);
});
await new Promise((resolve, reject) => {
  dnsTcp.once("error", reject);
  dnsTcp.listen(53, "127.0.0.1", resolve);
});
if (cfg.dnsSocket) {
  const dnsUnix = net.createServer(onDnsStream);
  await new Promise((resolve, reject) => {
    dnsUnix.once("error", reject);
    dnsUnix.listen(cfg.dnsSocket, resolve);
  });
}
print({ ready: true });
