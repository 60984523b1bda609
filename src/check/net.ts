/**
 * Network failures said the way a user can act on them: the name did not
 * resolve, nothing listens there, no answer, or the TLS handshake failed.
 */
export type Reach = "no DNS" | "refused" | "timed out" | "unreachable" | "TLS failure" | "closed";

export class TimeoutError extends Error {
  readonly code = "ETIMEDOUT";
  constructor(what: string, ms: number) {
    super(`${what}: no answer within ${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s`);
    this.name = "TimeoutError";
  }
}

/** A promise bounded by ms; onTimeout tears down whatever was still waiting. */
export function within<T>(what: string, ms: number, work: Promise<T>, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new TimeoutError(what, ms));
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

const TLS_CODES = /^(ERR_SSL_|ERR_TLS_|EPROTO|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/;

/** fetch() reports "fetch failed" and keeps the socket's error as its cause. */
function underlying(err: unknown): unknown {
  const e = err as (Error & { code?: unknown; cause?: unknown }) | undefined;
  return e && e.code === undefined && e.cause instanceof Error ? e.cause : err;
}

export function classify(error: unknown): Reach | undefined {
  const e = underlying(error) as NodeJS.ErrnoException | undefined;
  const code = String(e?.code ?? "");
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "ENODATA" || code === "ESERVFAIL" || code === "ENOTIMP" || code === "EREFUSED_DNS")
    return "no DNS";
  if (code === "ECONNREFUSED") return "refused";
  if (code === "ETIMEDOUT" || code === "ETIMEOUT" || e instanceof TimeoutError || e?.name === "TimeoutError" || e?.name === "AbortError") return "timed out";
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EADDRNOTAVAIL") return "unreachable";
  if (code === "ECONNRESET" || code === "EPIPE") return "closed";
  if (TLS_CODES.test(code) || /SSL|TLS|certificate/i.test(String(e?.message ?? ""))) return "TLS failure";
  return undefined;
}

/** "refused (connect ECONNREFUSED 127.0.0.1:8883)", "timed out (...)": the kind first, then what Node said. */
export function describe(error: unknown): string {
  const err = underlying(error);
  const kind = classify(err);
  const message = String((err as Error | undefined)?.message ?? err);
  return kind ? `${kind} (${message})` : message;
}

/** What to do when a host cannot be reached at all, by the kind of failure. */
export function reachFix(err: unknown, host: string, port: number, lan: boolean): string {
  switch (classify(err)) {
    case "no DNS":
      return `${host} does not resolve: check the DDNS provider (ddclient on the Pi updates it) or give the address as HOST`;
    case "refused":
      return `nothing listens on ${host}:${port}: is the Pi up and mosquitto running (systemctl status mosquitto)?${lan ? "" : " Does the router forward this port to the Pi?"}`;
    case "timed out":
    case "unreachable":
      return lan
        ? `no answer from ${host}:${port}: is the Pi on, on this network, at its static address?`
        : `no answer from ${host}:${port}: does the router forward this port to the Pi, and is the Pi on? From inside the home network try --lan`;
    default:
      return `see the reason above; run pibake check again with --lan from the home network to tell the Pi from the way to it`;
  }
}
