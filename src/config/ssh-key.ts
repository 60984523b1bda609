import { ECDH } from "node:crypto";

/**
 * An authorized_keys line decoded as OpenSSH reads it (sshkey_read and sshkey_from_blob): strict
 * base64, the key type inside the blob the same as the one in front, and each type's fields of the
 * right size. A line that fails here is one sshd would skip, which with passwordSsh false leaves
 * the Pi without a way in. The line's shape (type, base64, comment) is the schema's regex.
 */

/** OpenSSH's limits on RSA moduli: SSH_RSA_MINIMUM_MODULUS_SIZE and OPENSSL_RSA_MAX_MODULUS_BITS. */
const RSA_MIN_BITS = 1024;
const RSA_MAX_BITS = 16384;
const ED25519_KEY_BYTES = 32;
/** Each NIST curve's OpenSSL name and its uncompressed point's size (0x04, then x and y). */
const CURVES: Record<string, { openssl: string; pointBytes: number }> = {
  nistp256: { openssl: "prime256v1", pointBytes: 65 },
  nistp384: { openssl: "secp384r1", pointBytes: 97 },
  nistp521: { openssl: "secp521r1", pointBytes: 133 },
};

class Truncated extends Error {}

/** The blob's fields, each an SSH "string" (a 32-bit big-endian length, then the bytes). */
class Reader {
  private at = 0;
  constructor(private readonly blob: Buffer) {}
  bytes(): Buffer {
    if (this.at + 4 > this.blob.length) throw new Truncated();
    const length = this.blob.readUInt32BE(this.at);
    if (this.at + 4 + length > this.blob.length) throw new Truncated();
    this.at += 4 + length;
    return this.blob.subarray(this.at - length, this.at);
  }
  text(): string {
    return this.bytes().toString("latin1");
  }
  get rest(): number {
    return this.blob.length - this.at;
  }
}

/** What is wrong with a public key line, or undefined when OpenSSH would take it. */
export function sshKeyProblem(line: string): string | undefined {
  const [type = "", base64 = ""] = line.split(" ");
  // Node's decoder skips what is not base64; OpenSSH's b64_pton refuses it, a missing '=' and stray bits.
  const blob = Buffer.from(base64, "base64");
  if (base64.length % 4 !== 0 || blob.toString("base64") !== base64) {
    return "is not an SSH public key: its base64 part is damaged (a character missing, added or changed?): copy the whole line of the .pub file again";
  }
  const r = new Reader(blob);
  try {
    const inside = r.text();
    if (inside !== type)
      return `is not an SSH public key: the line says ${type} but the key inside is ${/^[\x21-\x7e]{1,64}$/.test(inside) ? inside : "of no known type"}`;
    const problem = fieldsProblem(type, r);
    if (problem) return `is not an SSH public key: ${problem}`;
  } catch (err) {
    if (err instanceof Truncated) return "is not an SSH public key: it ends in the middle of the key (cut short?): copy the whole line of the .pub file again";
    throw err;
  }
  if (r.rest > 0) return `is not an SSH public key: ${r.rest} byte${r.rest === 1 ? "" : "s"} follow the key`;
  return undefined;
}

function fieldsProblem(type: string, r: Reader): string | undefined {
  switch (type) {
    case "ssh-ed25519":
      return ed25519Problem(r.bytes());
    case "sk-ssh-ed25519@openssh.com":
      return ed25519Problem(r.bytes()) ?? applicationProblem(r.text());
    case "ssh-rsa":
      return rsaProblem(r.bytes(), r.bytes());
    case "sk-ecdsa-sha2-nistp256@openssh.com":
      return ecdsaProblem("nistp256", r) ?? applicationProblem(r.text());
    default: {
      const curve = /^ecdsa-sha2-(nistp\d+)$/.exec(type)?.[1];
      return curve && CURVES[curve] ? ecdsaProblem(curve, r) : `${type} is not a key type pibake knows`;
    }
  }
}

function ed25519Problem(key: Buffer): string | undefined {
  return key.length === ED25519_KEY_BYTES ? undefined : `its Ed25519 key is ${key.length} bytes, not ${ED25519_KEY_BYTES}`;
}

/** FIDO keys carry the application they were made for, "ssh:" unless chosen otherwise. */
function applicationProblem(application: string): string | undefined {
  return application.length > 0 ? undefined : "its security key's application is empty";
}

/** e and n as SSH mpints: positive, big-endian, leading zero bytes allowed. */
function rsaProblem(e: Buffer, n: Buffer): string | undefined {
  if ((e[0] ?? 0) & 0x80 || (n[0] ?? 0) & 0x80) return "its RSA numbers are negative";
  const bits = bitLength(n);
  if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) return `its RSA modulus has ${bits} bits; OpenSSH takes ${RSA_MIN_BITS} to ${RSA_MAX_BITS}`;
  if (n.at(-1)! % 2 === 0) return "its RSA modulus is even, which no RSA key's is";
  if (bitLength(e) < 2 || e.at(-1)! % 2 === 0) return "its RSA exponent is not an odd number above 1";
  return undefined;
}

function bitLength(mpint: Buffer): number {
  const i = mpint.findIndex((b) => b !== 0);
  return i < 0 ? 0 : (mpint.length - i - 1) * 8 + (32 - Math.clz32(mpint[i]!));
}

function ecdsaProblem(curve: string, r: Reader): string | undefined {
  const named = r.text();
  if (named !== curve) return `its curve is ${/^[\x21-\x7e]{1,32}$/.test(named) ? named : "unnamed"}, not ${curve} as its type says`;
  const point = r.bytes();
  const { openssl, pointBytes } = CURVES[curve]!;
  // OpenSSH reads only uncompressed points (0x04, x, y).
  if (point.length !== pointBytes || point[0] !== 4) return `its ${curve} point is ${point.length} bytes, not the ${pointBytes} of an uncompressed point`;
  try {
    ECDH.convertKey(point, openssl);
  } catch {
    return `its point is not on the ${curve} curve`;
  }
  return undefined;
}
