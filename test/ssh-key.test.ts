/**
 * user.sshKeys decoded (src/config/ssh-key.ts) against the real `ssh-keygen -l`:
 * keys that ssh-keygen makes are taken by both, and each kind of damage is
 * refused by both. ssh-keygen cannot make FIDO (sk-) keys without a security
 * key, so those are put together from the parts of keys it made.
 */
import { execa } from "execa";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sshKeyProblem } from "../src/config/ssh-key.js";
import { tempDir } from "./helpers/cli.js";

const tmp = tempDir("pibake-ssh-key-");
afterAll(tmp.cleanup);

/** An SSH "string": a 32-bit big-endian length, then the bytes. */
function sshString(data: Buffer | string): Buffer {
  const bytes = Buffer.from(data);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/** The blob's strings, in order. */
function fields(blob: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < blob.length; ) {
    const n = blob.readUInt32BE(at);
    out.push(blob.subarray(at + 4, at + 4 + n));
    at += 4 + n;
  }
  return out;
}

const line = (type: string, blob: Buffer) => `${type} ${blob.toString("base64")} test@host`;
const blobOf = (keyLine: string) => Buffer.from(keyLine.split(" ")[1]!, "base64");

let fileNo = 0;
/** ssh-keygen -l on a file holding the line: 0 when it takes the key. */
async function sshKeygenAccepts(keyLine: string): Promise<{ ok: boolean; out: string }> {
  const file = path.join(tmp.dir, `k${fileNo++}.pub`);
  writeFileSync(file, `${keyLine}\n`);
  const r = await execa("ssh-keygen", ["-l", "-f", file], { reject: false, timeout: 10_000 });
  return { ok: r.exitCode === 0, out: `${r.stdout}${r.stderr}` };
}

const made: Record<string, string> = {};

beforeAll(async () => {
  for (const [name, args] of [
    ["ed25519", ["-t", "ed25519"]],
    ["rsa", ["-t", "rsa", "-b", "2048"]],
    ["ecdsa256", ["-t", "ecdsa", "-b", "256"]],
    ["ecdsa384", ["-t", "ecdsa", "-b", "384"]],
    ["ecdsa521", ["-t", "ecdsa", "-b", "521"]],
  ] as const) {
    const file = path.join(tmp.dir, name);
    await execa("ssh-keygen", ["-q", ...args, "-N", "", "-C", "test@host", "-f", file], { timeout: 60_000 });
    made[name] = readFileSync(`${file}.pub`, "utf8").trim();
  }
  const [, ed] = fields(blobOf(made.ed25519!));
  made["sk-ed25519"] = line("sk-ssh-ed25519@openssh.com", Buffer.concat([sshString("sk-ssh-ed25519@openssh.com"), sshString(ed!), sshString("ssh:")]));
  const [, , point] = fields(blobOf(made.ecdsa256!));
  made["sk-ecdsa"] = line(
    "sk-ecdsa-sha2-nistp256@openssh.com",
    Buffer.concat([sshString("sk-ecdsa-sha2-nistp256@openssh.com"), sshString("nistp256"), sshString(point!), sshString("ssh:")]),
  );
}, 120_000);

/** Damage done to a good key: [what, the key it starts from, how, what pibake says]. */
const broken: [string, string, (k: string) => string, RegExp][] = [
  ["one base64 character removed", "ed25519", (k) => k.replace(/^(\S+ \S{30})\S/, "$1"), /base64 part is damaged/],
  ["one base64 character removed (RSA)", "rsa", (k) => k.replace(/^(\S+ \S{200})\S/, "$1"), /base64 part is damaged/],
  ["a character that is not base64", "ed25519", (k) => k.replace(/^(\S+ \S{30})\S/, "$1!"), /base64 part is damaged/],
  ["the padding missing", "ecdsa256", (k) => k.replace(/^(\S+ \S+?)=+ /, "$1 "), /base64 part is damaged/],
  ["another type in front", "ed25519", (k) => k.replace(/^ssh-ed25519 /, "ssh-rsa "), /the line says ssh-rsa but the key inside is ssh-ed25519/],
  [
    "an ECDSA key said to be of another curve",
    "ecdsa256",
    (k) => k.replace(/^ecdsa-sha2-nistp256 /, "ecdsa-sha2-nistp384 "),
    /the line says ecdsa-sha2-nistp384 but the key inside is ecdsa-sha2-nistp256/,
  ],
  ["an Ed25519 key of 31 bytes", "ed25519", (k) => rebuild(k, ([t, key]) => [t!, key!.subarray(1)]), /Ed25519 key is 31 bytes, not 32/],
  ["an Ed25519 key of 33 bytes", "ed25519", (k) => rebuild(k, ([t, key]) => [t!, Buffer.concat([key!, Buffer.from([1])])]), /Ed25519 key is 33 bytes, not 32/],
  ["the blob cut short", "ed25519", (k) => line("ssh-ed25519", blobOf(k).subarray(0, -3)), /ends in the middle of the key/],
  ["bytes after the key", "ed25519", (k) => line("ssh-ed25519", Buffer.concat([blobOf(k), sshString("x")])), /5 bytes follow the key/],
  [
    "an RSA modulus of 512 bits",
    "rsa",
    (k) => rebuild(k, ([t, e, n]) => [t!, e!, Buffer.concat([Buffer.from([0]), n!.subarray(1, 65)])]),
    /RSA modulus has 512 bits; OpenSSH takes 1024 to 16384/,
  ],
  ["a negative RSA modulus", "rsa", (k) => rebuild(k, ([t, e, n]) => [t!, e!, n!.subarray(1)]), /RSA numbers are negative/],
  ["an ECDSA point one byte short", "ecdsa256", (k) => rebuild(k, ([t, c, p]) => [t!, c!, p!.subarray(0, -1)]), /nistp256 point is 64 bytes, not the 65/],
  [
    "an ECDSA point off its curve",
    "ecdsa384",
    (k) => rebuild(k, ([t, c, p]) => [t!, c!, Buffer.concat([p!.subarray(0, -1), Buffer.from([p!.at(-1)! ^ 1])])]),
    /point is not on the nistp384 curve/,
  ],
  ["an ECDSA blob naming another curve", "ecdsa521", (k) => rebuild(k, ([t, , p]) => [t!, Buffer.from("nistp384"), p!]), /curve is nistp384, not nistp521/],
  ["a FIDO key without its application", "sk-ed25519", (k) => line("sk-ssh-ed25519@openssh.com", blobOf(k).subarray(0, -8)), /ends in the middle of the key/],
  ["a FIDO ECDSA point of the wrong size", "sk-ecdsa", (k) => rebuild(k, ([t, c, p, app]) => [t!, c!, p!.subarray(0, 33), app!]), /nistp256 point is 33 bytes/],
];

/** The key with its blob's strings replaced, the type in front kept. */
function rebuild(keyLine: string, change: (parts: Buffer[]) => Buffer[]): string {
  return line(keyLine.split(" ")[0]!, Buffer.concat(change(fields(blobOf(keyLine))).map(sshString)));
}

describe("SSH public keys, decoded as OpenSSH does", () => {
  it.each(["ed25519", "rsa", "ecdsa256", "ecdsa384", "ecdsa521", "sk-ed25519", "sk-ecdsa"])(
    "a good %s key: taken by pibake and by ssh-keygen",
    async (name) => {
      const key = made[name]!;
      expect(sshKeyProblem(key)).toBeUndefined();
      const r = await sshKeygenAccepts(key);
      expect(r.ok, r.out).toBe(true);
    },
  );

  it.each(broken)("%s: refused by pibake and by ssh-keygen", async (_what, from, damage, says) => {
    const key = damage(made[from]!);
    expect(key).not.toBe(made[from]);
    expect(sshKeyProblem(key)).toMatch(/^is not an SSH public key: /);
    expect(sshKeyProblem(key)).toMatch(says);
    const r = await sshKeygenAccepts(key);
    expect(r.ok, `ssh-keygen took ${key}: ${r.out}`).toBe(false);
  });
});
