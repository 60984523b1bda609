/**
 * pibake's password hashes against the programs that define them:
 * sha512Crypt against `openssl passwd -6` and crypt(3) (through python3),
 * wpaPsk against wpa_passphrase, the $7$ format against mosquitto_passwd.
 * That mosquitto itself accepts the rendered $7$ hashes is proven in
 * mosquitto.test.ts, where every user logs in with its password.
 */
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { HashCache, mosquittoHash, sha512Crypt, verifyMosquittoHash, verifySha512Crypt, wpaPsk } from "../src/secrets/hashes.js";
import { StateDir } from "../src/secrets/state.js";
import { removeAllFixtures, tempDir } from "./helpers/render-fixture.js";

const PASSWORDS = [
  "password",
  "S3cret with spaces",
  `quotes ' " dollar $HOME backtick \` backslash \\ end`,
  "pässwörd ünïcode ☕",
  "-starts-with-a-dash",
  // Longer than one SHA-512 block (64 bytes): exercises the repeated digests.
  "a-long-passphrase-".repeat(8),
  "x",
];

afterAll(() => removeAllFixtures());

/** crypt(3) through python3: the crypt module where it exists, libcrypt through ctypes where it was removed (3.13). */
const PY_CRYPT = `
import sys, warnings
warnings.simplefilter("ignore")
try:
    from crypt import crypt
except ImportError:
    import ctypes, ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    def crypt(pw, salt):
        return lib.crypt(pw.encode(), salt.encode()).decode()
for line in sys.stdin.read().split("\\n"):
    if line:
        salt, pw = line.split("\\t", 1)
        print(crypt(pw, salt))
`;

describe("sha512Crypt ($6$) is crypt(3)'s SHA-512 scheme", () => {
  it("matches openssl passwd -6 -salt S PW for default rounds", async () => {
    for (const salt of ["S", "16charsalt./ABCD"]) {
      // -stdin: one password per line, so that a leading "-" or a quote is no argument syntax.
      const r = await execa("openssl", ["passwd", "-6", "-salt", salt, "-stdin"], { input: PASSWORDS.join("\n") + "\n", timeout: 20_000, reject: false });
      expect(r.exitCode, r.stderr).toBe(0);
      const theirs = r.stdout.split("\n");
      expect(theirs).toHaveLength(PASSWORDS.length);
      PASSWORDS.forEach((pw, i) => {
        expect(sha512Crypt(pw, salt), `password #${i}, salt ${salt}`).toBe(theirs[i]);
        expect(theirs[i]).toMatch(new RegExp(`^\\$6\\$${salt.replace(/[.$]/g, "\\$&")}\\$[./0-9A-Za-z]{86}$`));
      });
    }
  });

  it("verifies openssl's hashes and rejects a wrong password", async () => {
    const r = await execa("openssl", ["passwd", "-6", "-salt", "./xyz0123", "-stdin"], { input: `${PASSWORDS[2]}\n`, timeout: 20_000 });
    expect(verifySha512Crypt(PASSWORDS[2]!, r.stdout)).toBe(true);
    expect(verifySha512Crypt(`${PASSWORDS[2]}!`, r.stdout)).toBe(false);
  });

  it("matches python3's crypt for rounds=N", async () => {
    const cases: { pw: string; salt: string; rounds: number }[] = [];
    for (const rounds of [1000, 12345]) for (const pw of PASSWORDS) cases.push({ pw, salt: "roundsSalt", rounds });
    const input = cases.map((c) => `$6$rounds=${c.rounds}$${c.salt}\t${c.pw}`).join("\n") + "\n";
    const r = await execa("python3", ["-c", PY_CRYPT], { input, timeout: 30_000, reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    const theirs = r.stdout.split("\n");
    expect(theirs).toHaveLength(cases.length);
    cases.forEach((c, i) => {
      expect(theirs[i]).toMatch(new RegExp(`^\\$6\\$rounds=${c.rounds}\\$${c.salt}\\$[./0-9A-Za-z]{86}$`));
      expect(sha512Crypt(c.pw, c.salt, c.rounds), `password #${i % PASSWORDS.length}, rounds ${c.rounds}`).toBe(theirs[i]);
    });
    // A stored hash with its own rounds verifies (HashCache keeps such hashes).
    expect(verifySha512Crypt(cases[0]!.pw, theirs[0]!)).toBe(true);
  });

  it("makes random 16-character salts that openssl reproduces", async () => {
    const hash = sha512Crypt(PASSWORDS[2]!);
    const m = /^\$6\$([./0-9A-Za-z]{16})\$[./0-9A-Za-z]{86}$/.exec(hash);
    expect(m, hash).not.toBeNull();
    const r = await execa("openssl", ["passwd", "-6", "-salt", m![1]!, "-stdin"], { input: `${PASSWORDS[2]}\n`, timeout: 20_000 });
    expect(r.stdout).toBe(hash);
  });
});

describe("HashCache", () => {
  it("reuses a hash while the password is the same without checking the hash, makes a new one when it changes, and checks an older entry once", () => {
    const dir = tempDir("pibake-hashcache-");
    const state = new StateDir(path.join(dir, "state"));
    const calls: string[] = [];
    const made = new Map<string, string>([["hash-0", "pw-old-789"]]);
    const make = (pw: string) => {
      calls.push(`make ${pw}`);
      const hash = `hash-${made.size}`;
      made.set(hash, pw);
      return hash;
    };
    const verify = (pw: string, hash: string) => (calls.push(`verify ${pw}`), made.get(hash) === pw);
    const first = new HashCache(state);
    const h1 = first.get("user:admin", "pw-one-123", make, verify);
    first.save();
    expect(new HashCache(state).get("user:admin", "pw-one-123", make, verify)).toBe(h1);
    expect(calls).toEqual(["make pw-one-123"]);
    const changed = new HashCache(state);
    expect(changed.get("user:admin", "pw-two-456", make, verify)).not.toBe(h1);
    expect(calls).toEqual(["make pw-one-123", "make pw-two-456"]);
    // The file holds the hash and an HMAC, never the password; the key is 0600.
    const text = readFileSync(state.file("hashes.json"), "utf8");
    expect(text).not.toContain("pw-one-123");
    expect(statSync(state.file("hash-check-key")).mode & 0o777).toBe(0o600);
    // An entry as an older pibake wrote it: verified once, then kept with its HMAC.
    state.writeJson("hashes.json", { "user:admin": "hash-0" });
    calls.length = 0;
    const old = new HashCache(state);
    expect(old.get("user:admin", "pw-old-789", make, verify)).toBe("hash-0");
    old.save();
    expect(new HashCache(state).get("user:admin", "pw-old-789", make, verify)).toBe("hash-0");
    expect(calls).toEqual(["verify pw-old-789"]);
  });
});

describe("wpaPsk is WPA's PBKDF2 PSK", () => {
  const SSIDS = ["HomeNet", "Home WiFi; 2.4 GHz", 'Café ☕ "quoted"', "x".repeat(32)];
  const PASSPHRASES = ["12345678", `pass 'with' "quotes" $x \`y\` \\z`, "p".repeat(63)];

  it("matches wpa_passphrase (package wpasupplicant)", async () => {
    for (const ssid of SSIDS) {
      for (const passphrase of PASSPHRASES) {
        const r = await execa("wpa_passphrase", [ssid, passphrase], { timeout: 10_000, reject: false });
        expect(r.exitCode, `wpa_passphrase: ${r.stderr}${r.stdout}`).toBe(0);
        const psk = /^\s*psk=([0-9a-f]{64})$/m.exec(r.stdout)?.[1];
        expect(psk, r.stdout).toBeDefined();
        expect(wpaPsk(passphrase, ssid), `ssid ${JSON.stringify(ssid)}`).toBe(psk);
      }
    }
  });
});

describe("mosquittoHash ($7$) is mosquitto 2's password file format", () => {
  it("verifies hashes that mosquitto_passwd writes, and writes the same shape", async () => {
    const dir = tempDir("pibake-hashes-");
    const file = path.join(dir, "passwd");
    const users = PASSWORDS.filter((p) => !p.startsWith("-")).slice(0, 4);
    for (const [i, pw] of users.entries()) {
      const r = await execa("mosquitto_passwd", [...(i === 0 ? ["-c"] : []), "-b", file, `user${i}`, pw], { timeout: 10_000, reject: false });
      expect(r.exitCode, `${r.stderr}${r.stdout}`).toBe(0);
    }
    const lines = readFileSync(file, "utf8").trim().split("\n");
    expect(lines).toHaveLength(users.length);
    for (const [i, pw] of users.entries()) {
      const theirs = lines[i]!.slice(`user${i}:`.length);
      expect(theirs).toMatch(/^\$7\$\d+\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$/);
      expect(verifyMosquittoHash(pw, theirs)).toBe(true);
      expect(verifyMosquittoHash(`${pw}x`, theirs)).toBe(false);
      const iterations = Number(theirs.split("$")[2]);
      const ours = mosquittoHash(pw, Buffer.from(theirs.split("$")[3]!, "base64"), iterations);
      expect(ours).toBe(theirs);
    }
  });
});
