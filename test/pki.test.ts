/**
 * The CA and server certificate, read by openssl: chain, names, usages,
 * lifetime, algorithms; reuse and renewal across builds; and the CA key
 * staying in the state directory.
 */
import { createRequire } from "node:module";
import type forgeNamespace from "node-forge";
import { cpSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { execa } from "execa";
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeRendered } from "../src/render/write.js";
import { StateDir } from "../src/secrets/state.js";
import { ensurePki, SERVER_VALIDITY_DAYS, signCertificate } from "../src/secrets/pki.js";
import { baseConfig, removeAllFixtures, renderFixture, tempDir, unrelatedCaPem, type Fixture } from "./helpers/render-fixture.js";

const DAY_MS = 86_400_000;

async function openssl(args: string[], input?: string) {
  const r = await execa("openssl", args, { reject: false, timeout: 20_000, ...(input !== undefined ? { input } : {}) });
  return { code: r.exitCode, out: `${r.stdout}${r.stderr}` };
}

/** Write PEM text to a file in dir and return its path. */
function put(dir: string, name: string, pem: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, pem);
  return p;
}

/** notBefore and notAfter as openssl reads them. */
async function validity(certFile: string): Promise<{ notBefore: Date; notAfter: Date }> {
  const r = await openssl(["x509", "-in", certFile, "-noout", "-dates", "-dateopt", "iso_8601"]);
  expect(r.code, r.out).toBe(0);
  const nb = /notBefore=(\S+ \S+)/.exec(r.out)?.[1];
  const na = /notAfter=(\S+ \S+)/.exec(r.out)?.[1];
  expect(nb && na, r.out).toBeTruthy();
  return { notBefore: new Date(nb!.replace(" ", "T")), notAfter: new Date(na!.replace(" ", "T")) };
}

/** The value lines under an extension's heading in `openssl x509 -text`. */
function extension(text: string, heading: string): string {
  const m = new RegExp(`X509v3 ${heading}:( critical)?\\s*\\n\\s*([^\\n]+)`).exec(text);
  if (!m) throw new Error(`no "${heading}" extension in:\n${text}`);
  return `${m[1] ? "critical; " : ""}${m[2]!.trim()}`;
}

/** Base64 body lines of every PEM block of a kind, e.g. "RSA PRIVATE KEY". */
function pemBodyLines(pem: string): string[] {
  return pem
    .split("\n")
    .filter((l) => l && !l.startsWith("-----"))
    .map((l) => l.trim());
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? filesUnder(p) : [p];
  });
}

describe("signing", () => {
  it("gives the signature node-forge's own RSA gives, byte for byte, with Node's", () => {
    const forge = createRequire(import.meta.url)("node-forge") as typeof forgeNamespace;
    const { privateKey } = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      privateKeyEncoding: { type: "pkcs1", format: "pem" },
      publicKeyEncoding: { type: "spki", format: "pem" },
    });
    const key = forge.pki.privateKeyFromPem(privateKey);
    const unsigned = () => {
      const cert = forge.pki.createCertificate();
      cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
      cert.serialNumber = "0a1b2c";
      cert.validity.notBefore = new Date("2026-01-01T00:00:00Z");
      cert.validity.notAfter = new Date("2027-01-01T00:00:00Z");
      cert.setSubject([{ shortName: "CN", value: "signing test" }]);
      cert.setIssuer([{ shortName: "CN", value: "signing test" }]);
      cert.setExtensions([{ name: "basicConstraints", cA: true, critical: true }]);
      return cert;
    };
    const byForge = unsigned();
    byForge.sign(key, forge.md.sha256.create());
    const byNode = unsigned();
    signCertificate(byNode, privateKey);
    expect(forge.pki.certificateToPem(byNode)).toBe(forge.pki.certificateToPem(byForge));
    expect(new X509Certificate(forge.pki.certificateToPem(byNode)).verify(createPublicKey(privateKey))).toBe(true);
  });
});

describe("the CA and server certificate, as openssl reads them", () => {
  let fx: Fixture;
  let work: string;
  let caFile: string;
  let serverFile: string;

  beforeAll(async () => {
    // A CA of its own, made by this render, as a first `pibake render` makes it.
    fx = await renderFixture({ freshCa: true });
    expect(fx.secrets.pki.caCreated).toBe(true);
    work = tempDir("pibake-pki-");
    caFile = put(work, "ca.crt", fx.overlayText("etc/mosquitto/certs/ca.crt"));
    serverFile = put(work, "server.crt", fx.overlayText("etc/mosquitto/certs/server.crt"));
  });

  /** A copy of the first render's state directory, so that each test starts from the same CA and certificate. */
  const copyState = (): string => {
    const dir = path.join(tempDir("pibake-state-"), "state");
    cpSync(fx.state.dir, dir, { recursive: true });
    return dir;
  };

  afterAll(() => {
    fx?.cleanup();
    removeAllFixtures();
  });

  it("chains: openssl verify -CAfile ca.crt server.crt passes (and fails against another CA)", async () => {
    const r = await openssl(["verify", "-CAfile", caFile, serverFile]);
    expect(r.code, r.out).toBe(0);
    expect(r.out.trim()).toBe(`${serverFile}: OK`);
    // With the purpose TLS servers are checked for.
    const purpose = await openssl(["verify", "-purpose", "sslserver", "-CAfile", caFile, serverFile]);
    expect(purpose.code, purpose.out).toBe(0);
    // The ca.crt handed to clients is the one in the image.
    expect(fx.rendered.caCertPem).toBe(fx.overlayText("etc/mosquitto/certs/ca.crt"));
    const bad = await openssl(["verify", "-CAfile", put(work, "other-ca.crt", await unrelatedCaPem()), serverFile]);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toMatch(/unable to get local issuer certificate/);
  });

  it("names the domain, the extra names, <hostname>.local and the static IP in the SAN", async () => {
    const r = await openssl(["x509", "-in", serverFile, "-noout", "-text"]);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/Subject: CN = pibake-test\.freemyip\.com\n/);
    const san = extension(r.out, "Subject Alternative Name").split(/,\s*/).sort();
    expect(san).toEqual(["DNS:pibake-test.freemyip.com", "DNS:broker.lan", "DNS:broker.local", "IP Address:192.168.50.10", "IP Address:10.0.0.5"].sort());
    expect(extension(r.out, "Extended Key Usage")).toBe("TLS Web Server Authentication");
    expect(extension(r.out, "Basic Constraints")).toBe("critical; CA:FALSE");
    expect(extension(r.out, "Key Usage")).toBe("critical; Digital Signature, Key Encipherment");
    expect(r.out.match(/Signature Algorithm: (\S+)/g)).toEqual([
      "Signature Algorithm: sha256WithRSAEncryption",
      "Signature Algorithm: sha256WithRSAEncryption",
    ]);
    expect(r.out).toMatch(/Public-Key: \(2048 bit\)/);
    // Checked by name too, as a client would.
    for (const name of ["pibake-test.freemyip.com", "broker.lan", "broker.local"]) {
      const ok = await openssl(["verify", "-CAfile", caFile, "-verify_hostname", name, serverFile]);
      expect(ok.code, `${name}: ${ok.out}`).toBe(0);
    }
    for (const ip of ["192.168.50.10", "10.0.0.5"]) {
      const ok = await openssl(["verify", "-CAfile", caFile, "-verify_ip", ip, serverFile]);
      expect(ok.code, `${ip}: ${ok.out}`).toBe(0);
    }
    const wrong = await openssl(["verify", "-CAfile", caFile, "-verify_hostname", "other.example.com", serverFile]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.out).toMatch(/hostname mismatch/);
  });

  it("is valid for at most 825 days, from about now", async () => {
    const { notBefore, notAfter } = await validity(serverFile);
    const days = (notAfter.getTime() - notBefore.getTime()) / DAY_MS;
    expect(days).toBeLessThanOrEqual(825);
    expect(days).toBeGreaterThan(800);
    expect(SERVER_VALIDITY_DAYS).toBe(825);
    expect(Math.abs(notBefore.getTime() - Date.now())).toBeLessThan(2 * 3600 * 1000);
    const end = await openssl(["x509", "-in", serverFile, "-noout", "-checkend", String(800 * 86400)]);
    expect(end.code, end.out).toBe(0);
  });

  it("makes the CA a CA: CA:TRUE, keyCertSign, SHA-256, self-signed", async () => {
    const r = await openssl(["x509", "-in", caFile, "-noout", "-text"]);
    expect(r.code, r.out).toBe(0);
    expect(extension(r.out, "Basic Constraints")).toMatch(/^critical; CA:TRUE(, pathlen:0)?$/);
    expect(extension(r.out, "Key Usage")).toMatch(/^critical; .*Certificate Sign/);
    expect(r.out.match(/Signature Algorithm: (\S+)/g)).toEqual([
      "Signature Algorithm: sha256WithRSAEncryption",
      "Signature Algorithm: sha256WithRSAEncryption",
    ]);
    const self = await openssl(["verify", "-CAfile", caFile, caFile]);
    expect(self.code, self.out).toBe(0);
  });

  it("keeps the same certificate, key and overlay byte for byte when rebuilt for the same domain", async () => {
    const again = await renderFixture({ stateDir: copyState() });
    try {
      expect(again.secrets.pki.serverCertStatus).toBe("reused");
      for (const p of ["etc/mosquitto/certs/server.crt", "etc/mosquitto/certs/server.key", "etc/mosquitto/certs/ca.crt", "etc/mosquitto/passwd"]) {
        expect(again.overlayFile(p).equals(fx.overlayFile(p)), p).toBe(true);
      }
      expect(again.rendered.overlayTar.equals(fx.rendered.overlayTar)).toBe(true);
    } finally {
      again.cleanup();
    }
  });

  it("issues a new certificate from the same CA for a new domain, which openssl verifies with the old ca.crt", async () => {
    const config = baseConfig();
    config.tls.domain = "moved-test.freemyip.com";
    const moved = await renderFixture({ config, stateDir: copyState() });
    try {
      expect(moved.secrets.pki.serverCertStatus).toBe("re-issued (its names changed)");
      expect(moved.overlayText("etc/mosquitto/certs/ca.crt")).toBe(fx.overlayText("etc/mosquitto/certs/ca.crt"));
      const newCert = put(work, "moved.crt", moved.overlayText("etc/mosquitto/certs/server.crt"));
      expect(readFileSync(newCert, "utf8")).not.toBe(readFileSync(serverFile, "utf8"));
      const r = await openssl(["verify", "-CAfile", caFile, "-verify_hostname", "moved-test.freemyip.com", newCert]);
      expect(r.code, r.out).toBe(0);
      const text = await openssl(["x509", "-in", newCert, "-noout", "-text"]);
      expect(extension(text.out, "Subject Alternative Name")).toContain("DNS:moved-test.freemyip.com");
      expect(extension(text.out, "Subject Alternative Name")).not.toContain("pibake-test.freemyip.com");
    } finally {
      moved.cleanup();
    }
  });

  it("re-issues a stored certificate it cannot keep: unreadable, from another CA, not matching the stored key, or its key lost", async () => {
    const names = { commonName: fx.model.tls.domain, dnsNames: fx.model.tls.dnsNames, ipAddresses: fx.model.tls.ipAddresses };
    const cases: [string, (state: StateDir) => Promise<void>, string][] = [
      ["unreadable", async (st) => st.write("server.crt", "not a certificate\n"), "re-issued (the stored one could not be read)"],
      ["another CA", async (st) => st.write("server.crt", await unrelatedCaPem()), "re-issued (signed by another CA)"],
      [
        "another key",
        async (st) =>
          st.write(
            "server.key",
            generateKeyPairSync("rsa", {
              modulusLength: 2048,
              privateKeyEncoding: { type: "pkcs1", format: "pem" },
              publicKeyEncoding: { type: "spki", format: "pem" },
            }).privateKey,
          ),
        "re-issued (the stored key does not match it)",
      ],
      ["key missing", async (st) => rmSync(path.join(st.dir, "server.key")), "re-issued (its key was missing)"],
    ];
    for (const [what, spoil, status] of cases) {
      const state = new StateDir(copyState());
      await spoil(state);
      const pki = await ensurePki(state, fx.model.image.name, names);
      expect(pki.serverCertStatus, what).toBe(status);
      // The new certificate is the CA's, for the stored (or a new) key.
      const cert = new X509Certificate(pki.serverCertPem);
      expect(cert.checkIssued(new X509Certificate(pki.caCertPem)) && cert.verify(new X509Certificate(pki.caCertPem).publicKey), what).toBe(true);
      expect(cert.checkPrivateKey(createPrivateKey(state.read("server.key")!)), what).toBe(true);
      const r = await openssl(["verify", "-CAfile", caFile, put(work, `reissued-${what.replace(/ /g, "-")}.crt`, pki.serverCertPem)]);
      expect(r.code, r.out).toBe(0);
      // And the next render keeps it.
      expect((await ensurePki(state, fx.model.image.name, names)).serverCertStatus, what).toBe("reused");
    }
  });

  it("renews a server certificate within 30 days of expiry, and keeps one that has longer", async () => {
    const names = { commonName: fx.model.tls.domain, dnsNames: fx.model.tls.dnsNames, ipAddresses: fx.model.tls.ipAddresses };
    const state = new StateDir(copyState());
    const before = state.read("server.crt")!;
    const { notAfter } = await validity(serverFile);

    const early = await ensurePki(state, fx.model.image.name, names, new Date(notAfter.getTime() - 40 * DAY_MS));
    expect(early.serverCertStatus).toBe("reused");
    expect(early.serverCertPem).toBe(before);

    const later = new Date(notAfter.getTime() - 10 * DAY_MS);
    const renewed = await ensurePki(state, fx.model.image.name, names, later);
    expect(renewed.serverCertStatus).toBe("renewed (within 30 days of expiry)");
    expect(renewed.serverCertPem).not.toBe(before);
    expect(state.read("server.crt")).toBe(renewed.serverCertPem);
    const renewedFile = put(work, "renewed.crt", renewed.serverCertPem);
    const v = await validity(renewedFile);
    expect(v.notAfter.getTime()).toBeGreaterThan(notAfter.getTime() + 700 * DAY_MS);
    // Valid at that later date, from the same CA.
    const at = String(Math.floor(later.getTime() / 1000));
    const r = await openssl(["verify", "-attime", at, "-CAfile", caFile, renewedFile]);
    expect(r.code, r.out).toBe(0);
    // The old one would no longer do 10 days later still (it expires in between).
    const old = await openssl(["verify", "-attime", String(Math.floor((later.getTime() + 20 * DAY_MS) / 1000)), "-CAfile", caFile, serverFile]);
    expect(old.out).toMatch(/certificate has expired/);
  });

  it("never puts the CA key into the overlay tar, the stage or pi-gen.config", async () => {
    const caKey = fx.state.read("ca.key")!;
    const serverKey = fx.state.read("server.key")!;
    expect(caKey).toMatch(/-----BEGIN (RSA )?PRIVATE KEY-----/);
    const caLines = pemBodyLines(caKey).filter((l) => l.length >= 32);
    expect(caLines.length).toBeGreaterThan(20);
    const caDer = Buffer.from(pemBodyLines(caKey).join(""), "base64");
    const caModulus = (await openssl(["rsa", "-noout", "-modulus"], caKey)).out.trim();
    expect(caModulus).toMatch(/^Modulus=[0-9A-F]{700,}$/);

    const out = tempDir("pibake-out-");
    writeRendered(path.join(out, "render"), fx.rendered);
    const written = filesUnder(path.join(out, "render"));
    expect(written.map((f) => path.relative(path.join(out, "render"), f)).sort()).toEqual(
      expect.arrayContaining(["overlay.tar", "pi-gen.config", "ca.crt", "stage/00-broker/files/overlay.tar", "stage/00-broker/02-run-chroot.sh"]),
    );
    const blobs: [string, Buffer][] = [
      ["rendered overlay tar", fx.rendered.overlayTar],
      ["pi-gen.config", Buffer.from(fx.rendered.piGenConfig)],
      ...fx.rendered.stage.map((s): [string, Buffer] => [`stage/${s.path}`, s.content]),
      ...fx.rendered.overlay.map((o): [string, Buffer] => [`overlay ${o.path}`, o.content]),
      ...written.map((f): [string, Buffer] => [f, readFileSync(f)]),
    ];
    for (const [name, blob] of blobs) {
      const text = blob.toString("latin1");
      for (const line of caLines) expect(text.includes(line), `${name} holds a line of the CA key`).toBe(false);
      expect(blob.includes(caDer), `${name} holds the CA key in DER`).toBe(false);
    }
    // The search does find a key that is there: the server key is in the overlay tar.
    const overlayText = fx.rendered.overlayTar.toString("latin1");
    for (const line of pemBodyLines(serverKey)) expect(overlayText.includes(line)).toBe(true);
    // Every private key in the output is the server's, never the CA's.
    const keys = overlayText.match(/-----BEGIN (RSA )?PRIVATE KEY-----[\s\S]*?-----END (RSA )?PRIVATE KEY-----\n?/g) ?? [];
    expect(keys).toHaveLength(1);
    for (const k of keys) {
      const mod = (await openssl(["rsa", "-noout", "-modulus"], k)).out.trim();
      expect(mod).toMatch(/^Modulus=/);
      expect(mod).not.toBe(caModulus);
    }
    // The written output's secrets are private.
    expect(statSync(path.join(out, "render")).mode & 0o777).toBe(0o700);
  });
});
