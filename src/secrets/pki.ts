import { constants, createPrivateKey, generateKeyPair, privateEncrypt, randomBytes, X509Certificate } from "node:crypto";
import { createRequire } from "node:module";
import { promisify } from "node:util";
import type forge from "node-forge";
import type { StateDir } from "./state.js";
import { PibakeError } from "../errors.js";

/**
 * pibake's own certificate authority and the broker's server certificate.
 * The CA is made once and reused forever, so that clients that trust it keep
 * working when the image is rebuilt for a new domain; its key stays in the
 * state directory and never enters the image.
 */

/**
 * node-forge makes and signs certificates; it is loaded only when one must be
 * made, since a render that reuses the state directory's certificates checks
 * them with Node's own X509Certificate and needs none of it.
 */
type Forge = typeof forge;
let forgeLoaded: Forge | undefined;
function forgeLib(): Forge {
  forgeLoaded ??= createRequire(import.meta.url)("node-forge") as Forge;
  return forgeLoaded;
}
const DAY_MS = 24 * 3600 * 1000;
const CA_VALIDITY_DAYS = 3650;
/** Apple platforms refuse TLS server certificates valid for longer, even from private CAs. */
export const SERVER_VALIDITY_DAYS = 825;
const RENEW_BEFORE_DAYS = 30;

export interface CertificateNames {
  /** The public DNS name, the certificate's common name. */
  commonName: string;
  dnsNames: string[];
  ipAddresses: string[];
}

export interface Pki {
  caCertPem: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** Why the server certificate is what it is: "reused", or why it was issued now. */
  serverCertStatus: string;
  caCreated: boolean;
}

export interface CertSummary {
  subject: string;
  issuer: string;
  fingerprint256: string;
  notBefore: Date;
  notAfter: Date;
  dnsNames: string[];
  ipAddresses: string[];
}

/** An RSA key as node-forge's object (for its public half in a certificate) and as PEM (for Node's signing). */
interface RsaKey {
  key: forge.pki.rsa.PrivateKey;
  pem: string;
}

const generateKeyPairInPool = promisify(generateKeyPair);

/**
 * Node's native RSA key generation: node-forge's pure-JS prime search takes
 * seconds, which a render must not spend. It runs in Node's thread pool, so
 * that a first render's two keys (the search for a 3072-bit key alone can take
 * half a second) are made side by side, and beside the password hashes.
 */
async function newRsaKey(bits: number): Promise<RsaKey> {
  const { privateKey } = await generateKeyPairInPool("rsa", {
    modulusLength: bits,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs1", format: "pem" },
  });
  return rsaKeyFromPem(privateKey);
}

/** The stored PEM is node-forge's, as it always was. */
function rsaKeyFromPem(pem: string): RsaKey {
  const key = forgeLib().pki.privateKeyFromPem(pem);
  return { key, pem: forgeLib().pki.privateKeyToPem(key) };
}

function publicOf(key: forge.pki.rsa.PrivateKey): forge.pki.rsa.PublicKey {
  return forgeLib().pki.setRsaPublicKey(key.n, key.e);
}

/** DER of a DigestInfo's SHA-256 AlgorithmIdentifier and the digest's OCTET STRING header (RFC 8017, 9.2, note 1). */
const SHA256_DIGEST_INFO_PREFIX = Buffer.from("3031300d060960864801650304020105000420", "hex");

/**
 * Sign a certificate with sha256WithRSAEncryption, node-forge laying out the
 * certificate and Node's OpenSSL doing the RSA: forge's JavaScript RSA took a
 * tenth of a second and more for each signature with the 3072-bit CA key.
 * PKCS #1 v1.5 is deterministic: the signature is the one forge would make.
 */
export function signCertificate(cert: forge.pki.Certificate, keyPem: string): void {
  const signer = {
    sign: (md: forge.md.MessageDigest) =>
      privateEncrypt(
        { key: keyPem, padding: constants.RSA_PKCS1_PADDING },
        Buffer.concat([SHA256_DIGEST_INFO_PREFIX, Buffer.from(md.digest().getBytes(), "binary")]),
      ).toString("binary"),
  };
  // node-forge asks of the key only that it signs the digest it is given.
  cert.sign(signer as unknown as forge.pki.rsa.PrivateKey, forgeLib().md.sha256.create());
}

/** A positive 128-bit serial, as RFC 5280 asks (positive, unpredictable). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  if (bytes[0] === 0) bytes[0] = 1;
  return bytes.toString("hex");
}

/** A CA that can sign: its certificate as node-forge's object, its key as PEM. */
interface Ca {
  cert: forge.pki.Certificate;
  keyPem: string;
}

function makeCa(name: string, { key, pem }: RsaKey, now: Date): Ca {
  const cert = forgeLib().pki.createCertificate();
  cert.publicKey = publicOf(key);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(now.getTime() - 3600 * 1000);
  cert.validity.notAfter = new Date(now.getTime() + CA_VALIDITY_DAYS * DAY_MS);
  const subject = [
    { shortName: "CN", value: `pibake CA ${name}` },
    { shortName: "O", value: "pibake" },
  ];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  signCertificate(cert, pem);
  return { cert, keyPem: pem };
}

function issueServerCert(ca: Ca, serverKey: forge.pki.rsa.PrivateKey, names: CertificateNames, now: Date): forge.pki.Certificate {
  const cert = forgeLib().pki.createCertificate();
  cert.publicKey = publicOf(serverKey);
  cert.serialNumber = randomSerial();
  // An hour of slack for a Pi whose clock is still a little behind at boot.
  cert.validity.notBefore = new Date(now.getTime() - 3600 * 1000);
  cert.validity.notAfter = new Date(cert.validity.notBefore.getTime() + SERVER_VALIDITY_DAYS * DAY_MS);
  cert.setSubject([{ shortName: "CN", value: names.commonName }]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: true },
    {
      name: "subjectAltName",
      altNames: [...names.dnsNames.map((value) => ({ type: 2, value })), ...names.ipAddresses.map((ip) => ({ type: 7, ip }))],
    },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  signCertificate(cert, ca.keyPem);
  return cert;
}

export function summarize(pem: string): CertSummary {
  const x = new X509Certificate(pem);
  const san = x.subjectAltName ?? "";
  const entries = san ? san.split(/,\s*/) : [];
  return {
    subject: x.subject.replace(/\n/g, ", "),
    issuer: x.issuer.replace(/\n/g, ", "),
    fingerprint256: x.fingerprint256,
    notBefore: new Date(x.validFrom),
    notAfter: new Date(x.validTo),
    dnsNames: entries.filter((e) => e.startsWith("DNS:")).map((e) => e.slice(4)),
    ipAddresses: entries.filter((e) => e.startsWith("IP Address:")).map((e) => e.slice(11)),
  };
}

function sameSet(a: string[], b: string[]): boolean {
  const norm = (x: string[]) => [...new Set(x.map((s) => s.toLowerCase()))].sort().join(",");
  return norm(a) === norm(b);
}

/** Why the stored server certificate cannot be kept, or undefined when it can (checked with Node's own X.509 code). */
function reasonToReissue(certPem: string | undefined, keyPem: string | undefined, ca: X509Certificate, names: CertificateNames, now: Date): string | undefined {
  if (!certPem && !keyPem) return "issued (new)";
  if (!certPem || !keyPem) return `re-issued (its ${certPem ? "key" : "certificate"} was missing)`;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    return "re-issued (the stored one could not be read)";
  }
  try {
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return "re-issued (signed by another CA)";
  } catch {
    return "re-issued (signed by another CA)";
  }
  if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return "re-issued (the stored key does not match it)";
  const s = summarize(certPem);
  if (!sameSet(s.dnsNames, names.dnsNames) || !sameSet(s.ipAddresses, names.ipAddresses)) return "re-issued (its names changed)";
  if (s.subject !== `CN=${names.commonName}`) return "re-issued (its name changed)";
  if (s.notAfter.getTime() - now.getTime() < RENEW_BEFORE_DAYS * DAY_MS) return "renewed (within 30 days of expiry)";
  return undefined;
}

/**
 * Make or reuse the CA and the server certificate in the state directory.
 * A rebuild for the same names keeps key and certificate byte for byte; new
 * names get a new certificate from the same CA.
 */
export async function ensurePki(state: StateDir, caName: string, names: CertificateNames, now = new Date()): Promise<Pki> {
  let caCreated = false;
  let caCertPem = state.read("ca.crt");
  let caKeyPem = state.read("ca.key");
  // The CA for signing: made here, or read only when a certificate must be issued.
  let made: Ca | undefined;
  if (caCertPem && caKeyPem) {
    // Both must at least read; reading the key with Node's parser costs next to nothing.
    createPrivateKey(caKeyPem);
  } else if (caCertPem || caKeyPem) {
    throw new PibakeError(
      `the state directory ${state.dir} holds only half of the CA (${caCertPem ? "ca.crt without ca.key" : "ca.key without ca.crt"}): restore the missing file from a backup, or remove both to make a new CA that every client must trust again`,
    );
  }
  let serverKeyPem = state.read("server.key");
  // The keys a first render needs, started at once: the server's is needed whenever its key file is missing.
  const newCaKey = caCertPem ? undefined : newRsaKey(3072);
  const newServerKey = serverKeyPem ? undefined : newRsaKey(2048);
  // node-forge lays out the certificates once the keys come: loaded now, while the thread pool makes them, not after.
  if (newCaKey || newServerKey) forgeLib();
  if (!caCertPem || !caKeyPem) {
    made = makeCa(caName, await (newCaKey ?? newRsaKey(3072)), now);
    caKeyPem = made.keyPem;
    caCertPem = forgeLib().pki.certificateToPem(made.cert);
    state.write("ca.key", caKeyPem);
    state.write("ca.crt", caCertPem);
    caCreated = true;
  }

  let serverCertPem = state.read("server.crt");
  const reason = reasonToReissue(serverCertPem, serverKeyPem, new X509Certificate(caCertPem), names, now);
  if (reason) {
    const ca = made ?? { cert: forgeLib().pki.certificateFromPem(caCertPem), keyPem: caKeyPem };
    // A key that does not match (or is missing) is replaced; otherwise the key is kept.
    let serverKey: forge.pki.rsa.PrivateKey | undefined;
    if (serverKeyPem && !reason.includes("key does not match")) {
      try {
        serverKey = forgeLib().pki.privateKeyFromPem(serverKeyPem);
      } catch {
        serverKey = undefined;
      }
    }
    if (!serverKey) {
      const fresh = await (newServerKey ?? newRsaKey(2048));
      serverKey = fresh.key;
      serverKeyPem = fresh.pem;
      state.write("server.key", serverKeyPem);
    }
    serverCertPem = forgeLib().pki.certificateToPem(issueServerCert(ca, serverKey, names, now));
    state.write("server.crt", serverCertPem);
  }
  return {
    caCertPem,
    serverCertPem: serverCertPem!,
    serverKeyPem: serverKeyPem!,
    serverCertStatus: reason ?? "reused",
    caCreated,
  };
}
