import { execa } from "execa";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";

/**
 * A small real Raspberry-Pi-shaped disk image: an MBR made by sfdisk with a
 * FAT-typed boot partition and a Linux root partition holding random bytes
 * (so that xz has something to keep), compressed by the real xz.
 */
export interface SmallImage {
  fileName: string;
  xz: Buffer;
  downloadSha256: string;
  extractSha256: string;
  extractSize: number;
}

export async function makeSmallImage(dir: string, fileName: string, randomSize = 512 << 10): Promise<SmallImage> {
  const img = path.join(dir, fileName.replace(/\.xz$/, ""));
  const size = Math.max(4 << 20, (3 << 20) + randomSize);
  const raw = Buffer.alloc(size);
  randomBytes(randomSize).copy(raw, 2 << 20);
  writeFileSync(img, raw);
  await execa("sfdisk", ["--quiet", img], { input: "label: dos\nstart=2048, size=2048, type=c\nstart=4096, type=83\n" });
  await execa("xz", ["-T1", "-6", "--keep", "--force", img]);
  const xz = readFileSync(`${img}.xz`);
  const image = readFileSync(img);
  const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
  return { fileName, xz, downloadSha256: sha(xz), extractSha256: sha(image), extractSize: image.length };
}

export interface SeenRequest {
  method: string;
  path: string;
  range?: string;
}

export interface ImageServer {
  port: number;
  base: string;
  /** Every request, in order. */
  requests: SeenRequest[];
  /** Requests for image files (under /images/). */
  imageRequests(): SeenRequest[];
  /** The OS list served at /os_list.json (replace it freely). */
  list: unknown;
  /** Files under /images/, by path after it. */
  files: Map<string, Buffer>;
  /** The next image response stops after this many bytes (then the connection is cut); once. */
  cutAfter?: number | undefined;
  /** Serve image bytes with one byte changed. */
  corrupt: boolean;
  /** Answer Range requests with the whole file (200), as some servers do. */
  ignoreRange: boolean;
  /** A pause after each 64 KiB piece of an image, so that a client can be stopped half-way. */
  pieceDelayMs: number;
  /**
   * How the list and the images are framed: "node" as Node's server does
   * (HTTP/1.1, kept alive); "http1.0" as Python's http.server does (HTTP/1.0,
   * the connection closed after the body); "close" HTTP/1.1 with
   * `Connection: close`. The last two write the whole answer and the FIN at once.
   */
  framing: "node" | "http1.0" | "close";
  /** With "http1.0" and "close": send Content-Length (else the body ends where the connection does). */
  contentLength: boolean;
  close(): Promise<void>;
}

/**
 * The download host in tests, on 127.0.0.1: the OS list, image files with
 * Range support (206, and 416 past the end), /redirect/ to images as the
 * real host redirects to mirrors, and faults on request.
 */
export async function startImageServer(): Promise<ImageServer> {
  const sockets = new Set<net.Socket>();
  const state: Omit<ImageServer, "port" | "base" | "close" | "imageRequests"> = {
    requests: [],
    list: { os_list: [] },
    files: new Map(),
    corrupt: false,
    ignoreRange: false,
    pieceDelayMs: 0,
    framing: "node",
    contentLength: true,
  };
  /** The whole answer written to the socket by hand, then the FIN, none of it waiting for the client. */
  const sendRaw = (req: http.IncomingMessage, status: number, headers: Record<string, string>, body: Buffer) => {
    const lines = [`HTTP/${state.framing === "http1.0" ? "1.0" : "1.1"} ${status} ${http.STATUS_CODES[status]}`];
    for (const [k, v] of Object.entries(headers)) if (k !== "content-length" || state.contentLength) lines.push(`${k}: ${v}`);
    if (state.framing === "close") lines.push("connection: close");
    req.socket.write(`${lines.join("\r\n")}\r\n\r\n`);
    req.socket.end(body);
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    state.requests.push({ method: req.method ?? "", path: url.pathname, ...(req.headers.range ? { range: req.headers.range } : {}) });
    if (url.pathname === "/os_list.json") {
      const text = Buffer.from(JSON.stringify(state.list));
      if (state.framing !== "node") return sendRaw(req, 200, { "content-type": "application/json", "content-length": String(text.length) }, text);
      res.setHeader("content-type", "application/json");
      res.end(text);
      return;
    }
    if (url.pathname.startsWith("/redirect/")) {
      res.statusCode = 302;
      res.setHeader("location", `/images/${url.pathname.slice("/redirect/".length)}`);
      res.end();
      return;
    }
    const file = url.pathname.startsWith("/images/") ? state.files.get(url.pathname.slice("/images/".length)) : undefined;
    if (!file) {
      res.statusCode = 404;
      res.end("not found");
      return;
    }
    let body = file;
    if (state.corrupt) {
      body = Buffer.from(file);
      const mid = body.length >> 1;
      body.writeUInt8(body.readUInt8(mid) ^ 0xff, mid);
    }
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    let start = 0;
    if (m && !state.ignoreRange) {
      start = Number(m[1]);
      if (start >= body.length) {
        res.statusCode = 416;
        res.setHeader("content-range", `bytes */${body.length}`);
        res.end();
        return;
      }
      res.statusCode = 206;
      res.setHeader("content-range", `bytes ${start}-${body.length - 1}/${body.length}`);
    }
    res.setHeader("accept-ranges", "bytes");
    res.setHeader("content-length", String(body.length - start));
    const rest = body.subarray(start);
    const cut = state.cutAfter;
    if (state.framing !== "node") {
      state.cutAfter = undefined;
      const headers = Object.fromEntries(Object.entries(res.getHeaders()).map(([k, v]) => [k, String(v)]));
      return sendRaw(req, res.statusCode, headers, cut !== undefined && cut < rest.length ? rest.subarray(0, cut) : rest);
    }
    if (cut !== undefined && cut < rest.length) {
      state.cutAfter = undefined;
      res.write(rest.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 50));
      return;
    }
    // In pieces, so that a client sees progress and can be stopped half-way.
    let at = 0;
    const next = () => {
      if (at >= rest.length) return void res.end();
      const piece = rest.subarray(at, at + (64 << 10));
      at += piece.length;
      const later = () => (state.pieceDelayMs ? setTimeout(next, state.pieceDelayMs) : setImmediate(next));
      if (res.write(piece)) later();
      else res.once("drain", later);
    };
    next();
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return Object.assign(state, {
    port,
    base: `http://127.0.0.1:${port}`,
    imageRequests: () => state.requests.filter((r) => r.path.startsWith("/images/") || r.path.startsWith("/redirect/")),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  }) as ImageServer;
}

/** An HTTP proxy on 127.0.0.1 that tunnels CONNECT and forwards absolute-form requests, counting both. */
export async function startProxy(): Promise<{ url: string; connects: string[]; forwarded: string[]; close(): Promise<void> }> {
  const connects: string[] = [];
  const forwarded: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    forwarded.push(req.url ?? "");
    const target = new URL(req.url ?? "");
    const up = http.request(
      { host: target.hostname, port: target.port, path: target.pathname + target.search, method: req.method, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  server.on("connect", (req, client, head) => {
    connects.push(req.url ?? "");
    const [host, port] = (req.url ?? "").split(":");
    const up = net.connect(Number(port), host!, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    sockets.add(up);
    sockets.add(client as net.Socket);
    up.on("error", () => client.destroy());
    client.on("error", () => up.destroy());
  });
  server.on("connection", (s) => sockets.add(s));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    connects,
    forwarded,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
