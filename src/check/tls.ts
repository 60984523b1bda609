import { connect as tlsConnect, checkServerIdentity, type ConnectionOptions, type PeerCertificate, type TLSSocket } from "node:tls";
import { failed, ok, warning, type Budget, type CheckResult } from "./result.js";
import { classify, describe, reachFix, within } from "./net.js";

const DAY_MS = 86_400_000;
/** pibake renews the server certificate when a build finds it this close to expiry. */
const WARN_DAYS = 30;

export interface TlsTarget {
  /** What the user asked to check (a name or an address), for messages. */
  host: string;
  /** Where to connect: host itself, or the address it resolved to. */
  address: string;
  port: number;
  /** The name clients ask for and verify: tls.domain. */
  servername: string;
  /** The only CA trusted: the state directory's. */
  caPem: string;
  caFile: string;
  /** The server certificate the state directory issued last, if it has one. */
  issuedFingerprint256: string | undefined;
  stateDir: string;
  /** How to rebuild, for fixes: "pibake build CONFIG". */
  buildCommand: string;
  lan: boolean;
}

export interface TlsOutcome {
  results: CheckResult[];
  /** Whether a TLS connection was made at all: the MQTT checks on this port need one. */
  reachable: boolean;
  /** Whether a client that trusts only the state directory's CA and verifies the name accepts the server. */
  trusted: boolean;
}

/** One handshake, bounded; the socket is always destroyed. */
export function handshake(target: TlsTarget, ms: number, extra: ConnectionOptions = {}): Promise<{ socket: TLSSocket; peer: PeerCertificate; protocol: string | null; authorized: boolean; authorizationError: string | undefined }> {
  let socket: TLSSocket | undefined;
  const work = new Promise<{ socket: TLSSocket; peer: PeerCertificate; protocol: string | null; authorized: boolean; authorizationError: string | undefined }>((resolve, reject) => {
    socket = tlsConnect({
      host: target.address,
      port: target.port,
      servername: target.servername,
      ca: target.caPem,
      // Verified below, one question at a time, so that each failure is named.
      rejectUnauthorized: false,
      minVersion: "TLSv1.2",
      ...extra,
    });
    socket.once("secureConnect", () => {
      const s = socket!;
      resolve({ socket: s, peer: s.getPeerCertificate(), protocol: s.getProtocol(), authorized: s.authorized, authorizationError: s.authorizationError ? String(s.authorizationError) : undefined });
    });
    socket.once("error", reject);
    socket.once("close", () => reject(Object.assign(new Error("the connection closed during the TLS handshake"), { code: "ECONNRESET" })));
  });
  return within(`TLS handshake with ${target.host}:${target.port}`, ms, work, () => socket?.destroy()).finally(() => socket?.destroy());
}

/** OpenSSL's reason ("tlsv1 alert protocol version") out of its long error line, else the message. */
function opensslReason(err: unknown): string {
  const message = String((err as Error)?.message ?? err);
  return /SSL routines:[^:]*:([^:]+):/.exec(message)?.[1] ?? message.split("\n")[0]!;
}

/** Why a chain did not verify, in words. */
function chainProblem(code: string, target: TlsTarget): { detail: string; fix: string } {
  if (code === "CERT_HAS_EXPIRED") return { detail: `the server certificate has expired (${code})`, fix: `build a new image (${target.buildCommand}) and flash it: the build renews the certificate` };
  if (code === "CERT_NOT_YET_VALID") return { detail: `the server certificate is not valid yet (${code})`, fix: "check the clocks of the Pi and of this machine" };
  return {
    detail: `the server certificate is not signed by the CA in ${target.caFile} (${code})`,
    fix: `this is not the broker built with ${target.stateDir}: check the host (or use --lan), or pass --state with the state directory the image was built with`,
  };
}

export async function checkTls(target: TlsTarget, budget: Budget): Promise<TlsOutcome> {
  const where = `${target.host}:${target.port}`;
  let hs: Awaited<ReturnType<typeof handshake>>;
  try {
    hs = await handshake(target, budget.ms);
  } catch (err) {
    const kind = classify(err);
    const detail = `${where}: ${describe(err)}; the TLS and MQTT checks on this port were not tried`;
    return { results: [failed("tls connect", detail, reachFix(err, target.host, target.port, target.lan))], reachable: kind === "TLS failure", trusted: false };
  }
  const results: CheckResult[] = [];
  results.push(ok("tls connect", `${where} answers with ${hs.protocol ?? "TLS"}`));

  let chainOk = hs.authorized;
  if (hs.authorized) results.push(ok("tls chain", `verified against ${target.caFile} (only that CA trusted)`));
  else {
    const p = chainProblem(hs.authorizationError ?? "unknown error", target);
    results.push(failed("tls chain", p.detail, p.fix));
  }

  const identityError = checkServerIdentity(target.servername, hs.peer);
  if (identityError) {
    chainOk = false;
    results.push(failed("tls name", `the certificate does not carry ${target.servername}: ${identityError.message}`, `build a new image (${target.buildCommand}): its certificate names tls.domain`));
  } else results.push(ok("tls name", `the certificate carries ${target.servername}`));

  if (hs.protocol === "TLSv1.2" || hs.protocol === "TLSv1.3") {
    // The server must also refuse an older handshake, whatever the newest it speaks.
    try {
      // SECLEVEL=0 lets this client offer TLS 1.1 at all; OpenSSL 3 refuses to by default.
      const old = await handshake(target, budget.ms, { minVersion: "TLSv1.1", maxVersion: "TLSv1.1", ciphers: "DEFAULT@SECLEVEL=0" });
      results.push(failed("tls version", `${hs.protocol} is used, but the server also accepted ${old.protocol}`, `build a new image (${target.buildCommand}): pibake's mosquitto settings require TLS 1.2 or newer`));
    } catch (err) {
      const kind = classify(err);
      if (kind === "timed out") results.push(warning("tls version", `${hs.protocol} is used; a TLS 1.1 handshake got no answer (${describe(err)}), so its refusal is not proven`));
      else results.push(ok("tls version", `${hs.protocol} is used; a TLS 1.1 handshake is refused (${opensslReason(err)})`));
    }
  } else results.push(failed("tls version", `the server chose ${hs.protocol ?? "an unknown protocol"}`, `build a new image (${target.buildCommand}): pibake's mosquitto settings require TLS 1.2 or newer`));

  const notAfter = new Date(hs.peer.valid_to);
  const days = Math.floor((notAfter.getTime() - Date.now()) / DAY_MS);
  const until = `${notAfter.toISOString().slice(0, 10)}`;
  if (days < 0) results.push(failed("certificate expiry", `the server certificate expired on ${until}`, `build a new image (${target.buildCommand}) and flash it: the build renews the certificate`));
  else if (days < WARN_DAYS) results.push(warning("certificate expiry", `the server certificate expires on ${until} (${days} days left)`, `build a new image (${target.buildCommand}) and flash it: the build renews the certificate within ${WARN_DAYS} days of expiry`));
  else results.push(ok("certificate expiry", `valid until ${until} (${days} days left)`));

  const seen = hs.peer.fingerprint256;
  if (!target.issuedFingerprint256) results.push(warning("certificate origin", `${target.stateDir} holds no server certificate (server.crt) to compare with; the broker's is ${seen}`, `pass --state with the state directory the image was built with`));
  else if (seen === target.issuedFingerprint256) results.push(ok("certificate origin", `the server certificate is the one ${target.stateDir} issued (SHA-256 ${seen.slice(0, 23)}…)`));
  else if (hs.authorized)
    results.push(
      warning(
        "certificate origin",
        `the server certificate is signed by this CA but is not the one ${target.stateDir} holds now (SHA-256 ${seen.slice(0, 23)}…): the Pi runs an older image, or this is another broker with the same CA`,
        `build a new image (${target.buildCommand}) and flash it`,
      ),
    );
  else
    results.push(
      failed(
        "certificate origin",
        `the server certificate (SHA-256 ${seen.slice(0, 23)}…) is not the one ${target.stateDir} issued: you reached another machine`,
        `check the host, the router's port forwarding, or --state`,
      ),
    );
  return { results, reachable: true, trusted: chainOk && days >= 0 };
}
