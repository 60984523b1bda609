/**
 * HTTP for the OS list and the image: undici's fetch with the user's proxy
 * settings (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their lower-case forms;
 * Node 20's own fetch ignores them), redirects followed (the download host
 * sends each request on to a mirror), and bounded waits: for the connection,
 * for the response's headers, and between two pieces of its body.
 */
import { EnvHttpProxyAgent, fetch, type Dispatcher, type Response } from "undici";
import { PibakeError } from "../errors.js";

export interface HttpTimeouts {
  /** Milliseconds to open the connection (TCP and TLS). */
  connectMs: number;
  /** Milliseconds from the request to the response's headers. */
  headersMs: number;
  /** Milliseconds the body may stay silent. */
  idleMs: number;
}

export const DEFAULT_TIMEOUTS: HttpTimeouts = { connectMs: 30_000, headersMs: 60_000, idleMs: 60_000 };

export interface HttpClient {
  get(url: string, init: { headers?: Record<string, string>; signal?: AbortSignal | undefined }): Promise<Response>;
  close(): Promise<void>;
}

/** The proxy settings as curl and wget read them: the lower-case name wins. */
export function proxySettings(env: NodeJS.ProcessEnv): { httpProxy: string; httpsProxy: string; noProxy: string } {
  const pick = (name: string) => env[name.toLowerCase()] ?? env[name.toUpperCase()] ?? "";
  return { httpProxy: pick("http_proxy"), httpsProxy: pick("https_proxy") || pick("http_proxy"), noProxy: pick("no_proxy") };
}

export function createHttpClient(env: NodeJS.ProcessEnv = process.env, timeouts: HttpTimeouts = DEFAULT_TIMEOUTS): HttpClient {
  const dispatcher: Dispatcher = new EnvHttpProxyAgent({
    // Explicit values (an empty string means none), so that only `env` decides, not process.env.
    ...proxySettings(env),
    connect: { timeout: timeouts.connectMs },
    headersTimeout: timeouts.headersMs,
    bodyTimeout: timeouts.idleMs,
  });
  return {
    get: (url, init) => fetch(url, { dispatcher, redirect: "follow", headers: { "user-agent": "pibake", ...init.headers }, ...(init.signal ? { signal: init.signal } : {}) }),
    close: () => dispatcher.close(),
  };
}

/** A network failure in words: undici hides the reason in `cause`. */
export function networkReason(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  const cause = e?.cause;
  if (cause?.code === "UND_ERR_CONNECT_TIMEOUT") return "no connection within the time allowed";
  if (cause?.code === "UND_ERR_HEADERS_TIMEOUT") return "no answer within the time allowed";
  if (cause?.code === "UND_ERR_BODY_TIMEOUT") return "the transfer stalled";
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
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
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
