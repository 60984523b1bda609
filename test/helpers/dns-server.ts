/**
 * A tiny authoritative DNS responder on 127.0.0.1 (UDP, a free port) for tests:
 * names mapped to IPv4 addresses get A records, every other name NXDOMAIN.
 * Enough of RFC 1035 for one question per query, which is what resolvers send.
 */
import dgram from "node:dgram";

export interface DnsServer {
  port: number;
  /** Queries received, as "NAME TYPE" (type by number: 1 A, 28 AAAA). */
  queries: string[];
  close(): Promise<void>;
}

function readName(msg: Buffer, offset: number): { name: string; end: number } {
  const labels: string[] = [];
  let i = offset;
  while (msg[i]! !== 0) {
    const len = msg[i]!;
    labels.push(msg.subarray(i + 1, i + 1 + len).toString("ascii"));
    i += 1 + len;
  }
  return { name: labels.join(".").toLowerCase(), end: i + 1 };
}

export function answer(query: Buffer, records: Record<string, string>): Buffer {
  const { name, end } = readName(query, 12);
  const qtype = query.readUInt16BE(end);
  const question = query.subarray(12, end + 4);
  const address = records[name];
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2); // the query's id
  // QR=1, opcode 0, AA=1, RD copied from the query; RA=1; RCODE 3 (NXDOMAIN) for unknown names.
  header[2] = 0x84 | (query[2]! & 0x01);
  header[3] = 0x80 | (address === undefined ? 3 : 0);
  header.writeUInt16BE(1, 4);
  const withAnswer = address !== undefined && qtype === 1;
  header.writeUInt16BE(withAnswer ? 1 : 0, 6);
  if (!withAnswer) return Buffer.concat([header, question]);
  const rr = Buffer.alloc(16);
  rr.writeUInt16BE(0xc00c, 0); // a pointer to the question's name
  rr.writeUInt16BE(1, 2); // A
  rr.writeUInt16BE(1, 4); // IN
  rr.writeUInt32BE(60, 6); // TTL
  rr.writeUInt16BE(4, 10);
  address.split(".").forEach((octet, k) => (rr[12 + k] = Number(octet)));
  return Buffer.concat([header, question, rr]);
}

export async function startDnsServer(records: Record<string, string>): Promise<DnsServer> {
  const socket = dgram.createSocket("udp4");
  const queries: string[] = [];
  socket.on("message", (msg, rinfo) => {
    try {
      const { name, end } = readName(msg, 12);
      queries.push(`${name} ${msg.readUInt16BE(end)}`);
      socket.send(answer(msg, records), rinfo.port, rinfo.address);
    } catch {
      // A malformed query gets no answer, as from a real server that drops it.
    }
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => resolve());
  });
  return {
    port: socket.address().port,
    queries,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
