import { connect as tlsConnect, checkServerIdentity, rootCertificates, type ConnectionOptions, type PeerCertificate, type TLSSocket } from "node:tls";
import { failed, ok, warning, type Budget, type CheckResult } from "./result.js";
import { classify, describe, reachFix, within } from "./net.js";

const DAY_MS = 86_400_000;
/** pibake renews the server certificate when a build finds it this close to expiry. */
const WARN_DAYS = 30;
/** With ACME the Pi renews 30 days before Let's Encrypt's expiry; fewer than this left means renewals have been failing. */
const ACME_WARN_DAYS = 20;

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
  /**
   * tls.mode "acme": the chain must verify against the system's public roots (and the --ca-file
   * root, for a test CA); the own CA's certificate is only what the Pi serves until then.
   */
  acme?: { server: string; extraCaPem?: string; extraCaFile?: string };
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
export function handshake(
  target: TlsTarget,
  ms: number,
  extra: ConnectionOptions = {},
): Promise<{ socket: TLSSocket; peer: PeerCertificate; protocol: string | null; authorized: boolean; authorizationError: string | undefined }> {
  let socket: TLSSocket | undefined;
  const work = new Promise<{ socket: TLSSocket; peer: PeerCertificate; protocol: string | null; authorized: boolean; authorizationError: string | undefined }>(
    (resolve, reject) => {
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
        resolve({
          socket: s,
          peer: s.getPeerCertificate(),
          protocol: s.getProtocol(),
          authorized: s.authorized,
          authorizationError: s.authorizationError ? String(s.authorizationError) : undefined,
        });
      });
      socket.once("error", reject);
      socket.once("close", () => reject(Object.assign(new Error("the connection closed during the TLS handshake"), { code: "ECONNRESET" })));
    },
  );
  return within(`TLS handshake with ${target.host}:${target.port}`, ms, work, () => socket?.destroy()).finally(() => socket?.destroy());
}

/** OpenSSL's reason ("tlsv1 alert protocol version") out of its long error line, else the message. */
function opensslReason(err: unknown): string {
  const message = String((err as Error)?.message ?? err);
  return /SSL routines:[^:]*:([^:]+):/.exec(message)?.[1] ?? message.split("\n")[0]!;
}

/** Why a chain did not verify, in words. */
function chainProblem(code: string, target: TlsTarget): { detail: string; fix: string } {
  if (code === "CERT_HAS_EXPIRED")
    return {
      detail: `the server certificate has expired (${code})`,
      fix: `build a new image (${target.buildCommand}) and flash it: the build renews the certificate`,
    };
  if (code === "CERT_NOT_YET_VALID")
    return { detail: `the server certificate is not valid yet (${code})`, fix: "check the clocks of the Pi and of this machine" };
  return {
    detail: `the server certificate is not signed by the CA in ${target.caFile} (${code})`,
    fix: `this is not the broker built with ${target.stateDir}: check the host (or use --lan), or pass --state with the state directory the image was built with`,
  };
}

/** What a client with nothing installed trusts: Node's copy of the public roots, plus a root the user names. */
export function publicTrust(extraCaPem: string | undefined): string[] {
  return [...rootCertificates, ...(extraCaPem ? [extraCaPem] : [])];
}

/** "CN, O" of a certificate's issuer, as a line can say it. */
function issuerName(peer: PeerCertificate): string {
  const i = peer.issuer as unknown as Record<string, string | string[] | undefined> | undefined;
  const part = (k: string) => (Array.isArray(i?.[k]) ? (i[k] as string[]).join(" ") : (i?.[k] as string | undefined));
  return [part("CN"), part("O")].filter(Boolean).join(", ") || "an unnamed issuer";
}

/** TLS 1.2 or newer chosen, and a TLS 1.1 handshake refused, whatever the newest the server speaks. */
async function versionResult(target: TlsTarget, protocol: string | null, budget: Budget): Promise<CheckResult> {
  if (protocol !== "TLSv1.2" && protocol !== "TLSv1.3")
    return failed(
      "tls version",
      `the server chose ${protocol ?? "an unknown protocol"}`,
      `build a new image (${target.buildCommand}): pibake's mosquitto settings require TLS 1.2 or newer`,
    );
  try {
    // SECLEVEL=0 lets this client offer TLS 1.1 at all; OpenSSL 3 refuses to by default.
    const old = await handshake(target, budget.ms, { minVersion: "TLSv1.1", maxVersion: "TLSv1.1", ciphers: "DEFAULT@SECLEVEL=0" });
    return failed(
      "tls version",
      `${protocol} is used, but the server also accepted ${old.protocol}`,
      `build a new image (${target.buildCommand}): pibake's mosquitto settings require TLS 1.2 or newer`,
    );
  } catch (err) {
    if (classify(err) === "timed out")
      return warning("tls version", `${protocol} is used; a TLS 1.1 handshake got no answer (${describe(err)}), so its refusal is not proven`);
    return ok("tls version", `${protocol} is used; a TLS 1.1 handshake is refused (${opensslReason(err)})`);
  }
}

export async function checkTls(target: TlsTarget, budget: Budget): Promise<TlsOutcome> {
  if (target.acme) return checkPublicTls(target, target.acme, budget);
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

  const nameLine = nameResult(target, hs.peer);
  if (nameLine.status !== "ok") chainOk = false;
  results.push(nameLine);
  results.push(await versionResult(target, hs.protocol, budget));
  const notAfter = new Date(hs.peer.valid_to);
  results.push(expiryResult(target, notAfter));
  results.push(originResult(target, hs.peer.fingerprint256, hs.authorized));
  return { results, reachable: true, trusted: chainOk && notAfter.getTime() >= Date.now() };
}

/** The certificate names tls.domain (the name clients connect to). */
function nameResult(target: TlsTarget, peer: Parameters<typeof checkServerIdentity>[1]): CheckResult {
  const identityError = checkServerIdentity(target.servername, peer);
  if (!identityError) return ok("tls name", `the certificate carries ${target.servername}`);
  return failed(
    "tls name",
    `the certificate does not carry ${target.servername}: ${identityError.message}`,
    `build a new image (${target.buildCommand}): its certificate names tls.domain`,
  );
}

/** Days left on the server certificate: a warning within WARN_DAYS, a failure once expired. */
function expiryResult(target: TlsTarget, notAfter: Date): CheckResult {
  const days = Math.floor((notAfter.getTime() - Date.now()) / DAY_MS);
  const until = `${notAfter.toISOString().slice(0, 10)}`;
  if (days < 0)
    return failed(
      "certificate expiry",
      `the server certificate expired on ${until}`,
      `build a new image (${target.buildCommand}) and flash it: the build renews the certificate`,
    );
  if (days < WARN_DAYS)
    return warning(
      "certificate expiry",
      `the server certificate expires on ${until} (${days} days left)`,
      `build a new image (${target.buildCommand}) and flash it: the build renews the certificate within ${WARN_DAYS} days of expiry`,
    );
  return ok("certificate expiry", `valid until ${until} (${days} days left)`);
}

/** Whether the broker serves the certificate the state directory issued: the right machine, and the newest image. */
function originResult(target: TlsTarget, seen: string, authorized: boolean): CheckResult {
  if (!target.issuedFingerprint256)
    return warning(
      "certificate origin",
      `${target.stateDir} holds no server certificate (server.crt) to compare with; the broker's is ${seen}`,
      `pass --state with the state directory the image was built with`,
    );
  if (seen === target.issuedFingerprint256)
    return ok("certificate origin", `the server certificate is the one ${target.stateDir} issued (SHA-256 ${seen.slice(0, 23)}…)`);
  if (authorized)
    return warning(
      "certificate origin",
      `the server certificate is signed by this CA but is not the one ${target.stateDir} holds now (SHA-256 ${seen.slice(0, 23)}…): the Pi runs an older image, or this is another broker with the same CA`,
      `build a new image (${target.buildCommand}) and flash it`,
    );
  return failed(
    "certificate origin",
    `the server certificate (SHA-256 ${seen.slice(0, 23)}…) is not the one ${target.stateDir} issued: you reached another machine`,
    `check the host, the router's port forwarding, or --state`,
  );
}

/**
 * tls.mode "acme": the chain against the public roots, its issuer and days left. Until the first
 * public certificate arrives the Pi serves the own CA's: a warning, since ca.crt clients connect.
 */
async function checkPublicTls(target: TlsTarget, acme: NonNullable<TlsTarget["acme"]>, budget: Budget): Promise<TlsOutcome> {
  const where = `${target.host}:${target.port}`;
  const roots = `the system's public roots${acme.extraCaFile ? ` and ${acme.extraCaFile}` : ""}`;
  let hs: Awaited<ReturnType<typeof handshake>>;
  try {
    hs = await handshake(target, budget.ms, { ca: publicTrust(acme.extraCaPem) });
  } catch (err) {
    const detail = `${where}: ${describe(err)}; the TLS and MQTT checks on this port were not tried`;
    return {
      results: [failed("tls connect", detail, reachFix(err, target.host, target.port, target.lan))],
      reachable: classify(err) === "TLS failure",
      trusted: false,
    };
  }
  const results: CheckResult[] = [ok("tls connect", `${where} answers with ${hs.protocol ?? "TLS"}`)];
  const issuer = issuerName(hs.peer);
  const journal = "on the Pi: journalctl -u pibake-acme (or pibake check --ssh), and /boot/firmware/pibake-status.txt";
  let trusted = hs.authorized;
  if (hs.authorized) results.push(ok("tls chain", `verified against ${roots}: issued by ${issuer} (ACME, ${acme.server})`));
  else {
    let ownCa = false;
    try {
      ownCa = (await handshake(target, budget.ms, { ca: target.caPem })).authorized;
    } catch {
      // Unreachable the second time: judged by the first handshake alone.
    }
    if (ownCa) {
      results.push(
        warning(
          "tls chain",
          `the own CA's certificate is served (${target.caFile} verifies it): the public certificate from ${acme.server} has not arrived yet`,
          `it comes within minutes of the first boot; if not, see why ${journal}`,
        ),
      );
      trusted = true;
    } else
      results.push(
        failed(
          "tls chain",
          `the server certificate (issued by ${issuer}) does not verify against ${roots} (${hs.authorizationError ?? "unknown error"})`,
          `check the host; ${journal}`,
        ),
      );
  }
  const identityError = checkServerIdentity(target.servername, hs.peer);
  if (identityError) {
    trusted = false;
    results.push(
      failed("tls name", `the certificate does not carry ${target.servername}: ${identityError.message}`, `the Pi obtains one for tls.domain: ${journal}`),
    );
  } else results.push(ok("tls name", `the certificate carries ${target.servername}`));
  results.push(await versionResult(target, hs.protocol, budget));

  const notAfter = new Date(hs.peer.valid_to);
  const days = Math.floor((notAfter.getTime() - Date.now()) / DAY_MS);
  const until = notAfter.toISOString().slice(0, 10);
  // The Pi renews when a third of the lifetime is left (30 of Let's Encrypt's 90 days): 20 days left means it has failed for 10.
  if (days < 0) results.push(failed("certificate expiry", `the certificate from ${issuer} expired on ${until}`, `the Pi could not renew it: ${journal}`));
  else if (days < ACME_WARN_DAYS)
    results.push(
      warning(
        "certificate expiry",
        `the certificate from ${issuer} expires on ${until} (${days} days left): the Pi should have renewed it by now`,
        `see why ${journal}`,
      ),
    );
  else results.push(ok("certificate expiry", `valid until ${until} (${days} days left), issued by ${issuer}`));
  return { results, reachable: true, trusted: trusted && days >= 0 };
}
