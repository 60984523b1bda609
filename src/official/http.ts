/**
 * HTTP for the OS list and the image: Node's own http and https, with the
 * user's proxy settings (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their
 * lower-case forms), redirects followed (the download host sends each
 * request on to a mirror), and bounded waits: for the connection, for the
 * response's headers, and between two pieces of its body.
 *
 * Why not undici (fetch): its HTTP/1 parser pauses while the reader is
 * behind, and when the server then closes the connection (HTTP/1.0, or
 * `Connection: close`, as Python's http.server does) it asserts from the
 * socket's "end" handler, an exception no caller can catch. The fix is in
 * undici 8, which needs Node 22.19; pibake supports Node 20. Node's client
 * reads a body as a stream whose backpressure pauses the socket, and ends it
 * or fails it however the connection ends.
 */
import http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { HttpsProxyAgent } from "https-proxy-agent";
import { PibakeError } from "../errors.js";

export interface HttpTimeouts {
  /** Milliseconds to open the connection (TCP and TLS, through the proxy when there is one). */
  connectMs: number;
  /** Milliseconds from the request to the response's headers. */
  headersMs: number;
  /** Milliseconds the body may stay silent. */
  idleMs: number;
}

export const DEFAULT_TIMEOUTS: HttpTimeouts = { connectMs: 30_000, headersMs: 60_000, idleMs: 60_000 };

const MAX_REDIRECTS = 10;

export interface HttpResponse {
  status: number;
  statusText: string;
  /** The final URL, after redirects. */
  url: string;
  headers: { get(name: string): string | null };
  /** The body as it arrives; a slow reader holds the socket back. Throws when the connection ends before the body does. */
  body: AsyncIterable<Uint8Array>;
  /** Not reading the body: closes the connection. */
  cancel(): void;
  text(): Promise<string>;
}

export interface HttpClient {
  get(url: string, init: { headers?: Record<string, string>; signal?: AbortSignal | undefined }): Promise<HttpResponse>;
  close(): Promise<void>;
}

/** The proxy settings as curl and wget read them: the lower-case name wins. */
export function proxySettings(env: NodeJS.ProcessEnv): { httpProxy: string; httpsProxy: string; noProxy: string } {
  const pick = (name: string) => env[name.toLowerCase()] ?? env[name.toUpperCase()] ?? "";
  return { httpProxy: pick("http_proxy"), httpsProxy: pick("https_proxy") || pick("http_proxy"), noProxy: pick("no_proxy") };
}

/**
 * Whether NO_PROXY exempts a URL, as curl reads it: `*` for every host;
 * otherwise names separated by commas or spaces, each the host itself or a
 * domain it is in (a leading dot or `*.` allowed), with a port when given.
 */
export function bypassesProxy(url: URL, noProxy: string): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  for (const item of noProxy
    .toLowerCase()
    .split(/[\s,]+/)
    .filter(Boolean)) {
    if (item === "*") return true;
    // [v6]:port, name:port, or a bare name or address (an IPv6 address has several colons).
    const m = /^\[(.+)\](?::(\d+))?$/.exec(item) ?? /^([^:]+):(\d+)$/.exec(item);
    const name = (m ? m[1]! : item).replace(/^\*?\./, "");
    if (m?.[2] && m[2] !== port) continue;
    if (host === name || host.endsWith(`.${name}`)) return true;
  }
  return false;
}

/** The proxy for a URL, or undefined for a direct connection. */
export function proxyFor(url: URL, env: NodeJS.ProcessEnv): string | undefined {
  const { httpProxy, httpsProxy, noProxy } = proxySettings(env);
  const proxy = url.protocol === "https:" ? httpsProxy : httpProxy;
  if (!proxy || bypassesProxy(url, noProxy)) return undefined;
  return proxy;
}

/** A failure of the transfer itself, with a reason in words. */
export class NetworkError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "NetworkError";
  }
}

/** The client's connections: direct agents, and one agent per proxy, made when first needed. */
interface Agents {
  readonly env: NodeJS.ProcessEnv;
  readonly direct: Record<"http:" | "https:", http.Agent>;
  readonly viaProxy: Map<string, HttpsProxyAgent<string>>;
}

export function createHttpClient(env: NodeJS.ProcessEnv = process.env, timeouts: HttpTimeouts = DEFAULT_TIMEOUTS): HttpClient {
  // One connection per request (no keep-alive): nothing lingers after close(), and a half-read answer never meets the next request.
  const agents: Agents = {
    env,
    direct: { "http:": new http.Agent({ keepAlive: false }), "https:": new https.Agent({ keepAlive: false }) },
    viaProxy: new Map(),
  };
  return {
    async get(url, init) {
      const headers = { "user-agent": "pibake", ...init.headers };
      let current = new URL(url);
      for (let hops = 0; ; hops++) {
        if (current.protocol !== "http:" && current.protocol !== "https:") throw new NetworkError(`${current.protocol} URLs are not supported`, "PROTOCOL");
        const res = await requestOnce(agents, timeouts, current, headers, init.signal);
        const location = res.headers.location;
        if ([301, 302, 303, 307, 308].includes(res.statusCode ?? 0) && location) {
          res.destroy();
          if (hops >= MAX_REDIRECTS) throw new NetworkError(`more than ${MAX_REDIRECTS} redirects`, "REDIRECTS");
          current = new URL(location, current);
          continue;
        }
        return wrap(res, current.href);
      }
    },
    async close() {
      for (const agent of [...Object.values(agents.direct), ...agents.viaProxy.values()]) agent.destroy();
    },
  };
}

/** The agent for a URL: direct, or through the proxy the environment names for it. */
function agentFor(agents: Agents, url: URL): { agent: http.Agent; proxied: boolean } {
  const proxy = proxyFor(url, agents.env);
  if (!proxy) return { agent: agents.direct[url.protocol as "http:" | "https:"], proxied: false };
  // Every request through the proxy is a CONNECT tunnel, http as https, as undici's ProxyAgent did before.
  let agent = agents.viaProxy.get(proxy);
  if (!agent) agents.viaProxy.set(proxy, (agent = new HttpsProxyAgent(proxy, { keepAlive: false })));
  return { agent, proxied: true };
}

/** One GET, no redirects followed: the response once its headers are in, each wait bounded; the signal ends it at any time. */
function requestOnce(
  agents: Agents,
  timeouts: HttpTimeouts,
  url: URL,
  headers: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const { agent, proxied } = agentFor(agents, url);
    const req = (url.protocol === "https:" ? https : http).request(url, { method: "GET", agent, headers });
    const fail = (err: Error) => req.destroy(err);
    const connectTimer = setTimeout(() => fail(new NetworkError("no connection within the time allowed", "CONNECT_TIMEOUT")), timeouts.connectMs);
    const headersTimer = setTimeout(() => fail(new NetworkError("no answer within the time allowed", "HEADERS_TIMEOUT")), timeouts.headersMs);
    const onAbort = () => fail(abortError(signal!));
    signal?.addEventListener("abort", onAbort, { once: true });
    const settled = () => {
      clearTimeout(connectTimer);
      clearTimeout(headersTimer);
    };
    req.once("socket", (socket: Socket) => {
      // A proxy agent hands over its tunnel once it is open; a direct socket may still be connecting.
      const secure = url.protocol === "https:" && !proxied;
      if (!socket.connecting && !secure) clearTimeout(connectTimer);
      else socket.once(secure ? "secureConnect" : "connect", () => clearTimeout(connectTimer));
    });
    req.once("error", (err) => {
      settled();
      signal?.removeEventListener("abort", onAbort);
      reject(err);
    });
    req.once("response", (res) => {
      settled();
      // From here on the body's reader sees the failures: the signal and silence end it with an error.
      req.setTimeout(timeouts.idleMs, () => res.destroy(new NetworkError("the transfer stalled", "IDLE_TIMEOUT")));
      signal?.removeEventListener("abort", onAbort);
      const onBodyAbort = () => res.destroy(abortError(signal!));
      signal?.addEventListener("abort", onBodyAbort, { once: true });
      res.once("close", () => signal?.removeEventListener("abort", onBodyAbort));
      resolve(res);
    });
    req.end();
  });
}

function wrap(res: http.IncomingMessage, url: string): HttpResponse {
  return {
    status: res.statusCode ?? 0,
    statusText: res.statusMessage ?? "",
    url,
    headers: {
      get(name) {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
      },
    },
    body: bodyOf(res),
    cancel: () => void res.destroy(),
    async text() {
      const parts: Buffer[] = [];
      for await (const chunk of bodyOf(res)) parts.push(chunk as Buffer);
      return Buffer.concat(parts).toString("utf8");
    },
  };
}

/** The body, failing when the connection ends before a body of known length (Content-Length or chunked) is complete. */
async function* bodyOf(res: http.IncomingMessage): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of res) yield chunk as Buffer;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ECONNRESET" || e.code === "ERR_STREAM_PREMATURE_CLOSE")
      throw new NetworkError("the connection closed before the end of the body", "CLOSED_EARLY");
    throw err;
  }
  // Node ends a body cut short without an error in some versions: the parser knows whether it was complete.
  if (!res.complete) throw new NetworkError("the connection closed before the end of the body", "CLOSED_EARLY");
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException("This operation was aborted", "AbortError");
}

/** A network failure in words. */
export function networkReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { cause?: { code?: string; message?: string } };
  if (e instanceof NetworkError) return e.message;
  // The code first, as curl's messages and the earlier ones: "ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:80".
  if (e?.code && e.message) return `${e.code}: ${e.message}`;
  const cause = e?.cause;
  if (cause?.code || cause?.message) return [cause.code, cause.message].filter(Boolean).join(": ");
  return e?.message ?? String(err);
}

/** The signal's reason when it fired, so that Ctrl-C surfaces as the caller's own error. */
export function abortReason(signal: AbortSignal | undefined, what: string): Error | undefined {
  if (!signal?.aborted) return undefined;
  return signal.reason instanceof Error && signal.reason.name !== "AbortError" ? signal.reason : new PibakeError(`${what} was stopped`, 130);
}

/** GET a small text (the OS list), bounded as a whole by `totalMs`. */
export async function getText(client: HttpClient, url: string, signal: AbortSignal | undefined, totalMs = 60_000): Promise<string> {
  const timeout = AbortSignal.timeout(totalMs);
  const both = signal ? AbortSignal.any([signal, timeout]) : timeout;
  try {
    const res = await client.get(url, { signal: both });
    if (res.status < 200 || res.status > 299) {
      res.cancel();
      throw new PibakeError(`HTTP ${res.status} ${res.statusText}`.trim());
    }
    return await res.text();
  } catch (err) {
    const stopped = abortReason(signal, `reading ${url}`);
    if (stopped) throw stopped;
    if (timeout.aborted) throw new PibakeError(`no complete answer within ${Math.round(totalMs / 1000)}s`);
    if (err instanceof PibakeError) throw err;
    throw new PibakeError(networkReason(err));
  }
}
