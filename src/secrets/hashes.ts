import { createHmac, hash, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import type { StateDir } from "./state.js";

/**
 * Password hashes in the formats the software on the Pi reads, so that no
 * plaintext password reaches the image.
 */

/** mosquitto 2.x password file format: `$7$<iterations>$<salt b64>$<hash b64>`, PBKDF2-HMAC-SHA512. */
export function mosquittoHash(password: string, salt: Buffer = randomBytes(12), iterations = 101): string {
  const hash = pbkdf2Sync(password, salt, iterations, 64, "sha512");
  return `$7$${iterations}$${salt.toString("base64")}$${hash.toString("base64")}`;
}

export function verifyMosquittoHash(password: string, encoded: string): boolean {
  const m = /^\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(encoded);
  if (!m) return false;
  const expected = Buffer.from(m[3]!, "base64");
  const actual = pbkdf2Sync(password, Buffer.from(m[2]!, "base64"), Number(m[1]), expected.length, "sha512");
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

const CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/** crypt(3)'s SHA-512 scheme (`$6$`), which chpasswd -e, usermod -p and PAM accept on every Raspberry Pi OS release. */
export function sha512Crypt(password: string, salt = randomCryptSalt(16), rounds = 5000): string {
  const pw = Buffer.from(password, "utf8");
  const s = Buffer.from(salt.slice(0, 16), "utf8");
  // One-shot hash of the parts joined: half the time of a Hash object per round (a first render makes this hash).
  const sha = (...parts: Buffer[]) => hash("sha512", Buffer.concat(parts), "buffer");
  const repeatTo = (digest: Buffer, len: number) => {
    const out = Buffer.alloc(len);
    for (let i = 0; i < len; i += 64) digest.copy(out, i, 0, Math.min(64, len - i));
    return out;
  };
  const b = sha(pw, s, pw);
  const aParts: Buffer[] = [pw, s, repeatTo(b, pw.length)];
  for (let n = pw.length; n > 0; n >>= 1) aParts.push(n & 1 ? b : pw);
  const a = sha(...aParts);
  const dp = repeatTo(sha(...Array<Buffer>(pw.length).fill(pw)), pw.length);
  const ds = repeatTo(sha(...Array<Buffer>(16 + a[0]!).fill(s)), s.length);
  let c = a;
  for (let i = 0; i < rounds; i++) {
    const parts: Buffer[] = [i & 1 ? dp : c];
    if (i % 3) parts.push(ds);
    if (i % 7) parts.push(dp);
    parts.push(i & 1 ? c : dp);
    c = sha(...parts);
  }
  const order = [
    [0, 21, 42],
    [22, 43, 1],
    [44, 2, 23],
    [3, 24, 45],
    [25, 46, 4],
    [47, 5, 26],
    [6, 27, 48],
    [28, 49, 7],
    [50, 8, 29],
    [9, 30, 51],
    [31, 52, 10],
    [53, 11, 32],
    [12, 33, 54],
    [34, 55, 13],
    [56, 14, 35],
    [15, 36, 57],
    [37, 58, 16],
    [59, 17, 38],
    [18, 39, 60],
    [40, 61, 19],
    [62, 20, 41],
  ] as const;
  let out = "";
  const enc = (v: number, n: number) => {
    for (let i = 0; i < n; i++, v >>= 6) out += CRYPT_ALPHABET[v & 63];
  };
  for (const [x, y, z] of order) enc((c[x]! << 16) | (c[y]! << 8) | c[z]!, 4);
  enc(c[63]!, 2);
  const roundsPart = rounds === 5000 ? "" : `rounds=${rounds}$`;
  return `$6$${roundsPart}${s.toString("utf8")}$${out}`;
}

export function verifySha512Crypt(password: string, encoded: string): boolean {
  const m = /^\$6\$(?:rounds=(\d+)\$)?([^$]{1,16})\$[./0-9A-Za-z]{86}$/.exec(encoded);
  if (!m) return false;
  const again = sha512Crypt(password, m[2], m[1] ? Number(m[1]) : 5000);
  return again.length === encoded.length && timingSafeEqual(Buffer.from(again), Buffer.from(encoded));
}

function randomCryptSalt(length: number): string {
  return [...randomBytes(length)].map((b) => CRYPT_ALPHABET[b & 63]).join("");
}

/** WPA-PSK as NetworkManager accepts it in place of the passphrase: 64 hex digits. */
export function wpaPsk(passphrase: string, ssid: string): string {
  return pbkdf2Sync(passphrase, Buffer.from(ssid, "utf8"), 4096, 32, "sha1").toString("hex");
}

type Verifier = (password: string, hash: string) => boolean;

/**
 * Hashes are salted, so hashing again would change every render. The state
 * directory keeps each hash and reuses it while the password still matches:
 * two renders of the same config and state are byte-identical.
 *
 * Whether it still matches is told by an HMAC of the password under a random
 * key kept in the state directory, not by checking the hash: bcrypt and
 * scrypt are slow on purpose (a tenth of a second each), and a render that
 * repeats should not pay for them. An entry of an older pibake (the hash
 * alone) is checked the slow way once.
 */
export class HashCache {
  private readonly entries: Record<string, string | { hash: string; check: string }>;
  private dirty = false;
  private hmacKey: Buffer | undefined;

  constructor(private readonly state: StateDir) {
    this.entries = state.readJson<HashCache["entries"]>("hashes.json") ?? {};
  }

  private check(key: string, password: string): string {
    if (!this.hmacKey) {
      let hex = this.state.read("hash-check-key")?.trim();
      if (!hex || !/^[0-9a-f]{64}$/.test(hex)) {
        hex = randomBytes(32).toString("hex");
        this.state.write("hash-check-key", hex);
      }
      this.hmacKey = Buffer.from(hex, "hex");
    }
    return createHmac("sha256", this.hmacKey).update(key).update("\0").update(password).digest("hex");
  }

  get(key: string, password: string, make: (pw: string) => string, verify: Verifier): string {
    const cached = this.entries[key];
    const check = this.check(key, password);
    if (typeof cached === "object" && cached.check.length === check.length && timingSafeEqual(Buffer.from(cached.check), Buffer.from(check)))
      return cached.hash;
    const hash = typeof cached === "string" && verify(password, cached) ? cached : make(password);
    this.entries[key] = { hash, check };
    this.dirty = true;
    return hash;
  }

  save(): void {
    if (this.dirty) this.state.writeJson("hashes.json", this.entries);
    this.dirty = false;
  }
}
