/**
 * The rendered NetworkManager keyfiles read back by NetworkManager's own
 * keyfile code: `nmcli --offline connection modify … < file` parses the file
 * and prints the connection again as a normalized keyfile. Every rendered key
 * must come back with its value; the SSID must be the intended bytes.
 */
import { execa } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { baseConfig, DEFAULT_SECRET_ENV, removeAllFixtures, renderFixture, type TestConfig } from "./helpers/render-fixture.js";

afterAll(() => removeAllFixtures());

const LAN = "etc/NetworkManager/system-connections/pibake-lan.nmconnection";
const WIFI = "etc/NetworkManager/system-connections/pibake-wifi.nmconnection";

type Keyfile = Map<string, Map<string, string>>;

function parseKeyfile(text: string): Keyfile {
  const out: Keyfile = new Map();
  let section: Map<string, string> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (line === "" || line.startsWith("#")) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      section = new Map();
      out.set(head[1]!, section);
      continue;
    }
    const eq = line.indexOf("=");
    if (!section || eq < 1) throw new Error(`not a keyfile line: ${JSON.stringify(line)}`);
    section.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return out;
}

/** NetworkManager's reading of a keyfile, with one property set; the normalized keyfile it prints. */
async function nmcliOffline(keyfile: string, setting: string, value: string): Promise<string> {
  const r = await execa("nmcli", ["--offline", "connection", "modify", setting, value], { input: keyfile, reject: false, timeout: 15_000 });
  if (r.exitCode === undefined) throw new Error(`nmcli could not run (${r.shortMessage}); CI installs the Debian package network-manager`);
  expect(r.exitCode, `nmcli --offline refused the keyfile: ${r.stderr}\n${keyfile}`).toBe(0);
  return r.stdout;
}

const get = (kf: Keyfile, section: string, key: string) => kf.get(section)?.get(key);

/**
 * Every rendered key read back with its value. `autoconnect=true` is NetworkManager's
 * default, which it does not write back: checked as "not false". The SSID is compared
 * separately, as bytes (its text form may change).
 */
function expectKeysIntact(rendered: Keyfile, normalized: Keyfile): void {
  const lost: string[] = [];
  for (const [section, keys] of rendered) {
    for (const [key, value] of keys) {
      if (section === "wifi" && key === "ssid") continue;
      const back = get(normalized, section, key);
      if (section === "connection" && key === "autoconnect" && value === "true") {
        if (back !== undefined && back !== "true") lost.push(`[${section}] ${key}: ${value} came back as ${back}`);
        continue;
      }
      if (back !== value) lost.push(`[${section}] ${key}: ${value} came back as ${back ?? "(missing)"}`);
    }
  }
  expect(lost).toEqual([]);
}

/** The SSID line NetworkManager writes when given these exact bytes: the reference for "the intended SSID". */
async function canonicalSsidLine(keyfile: string, ssid: string): Promise<string | undefined> {
  return get(parseKeyfile(await nmcliOffline(keyfile, "802-11-wireless.ssid", ssid)), "wifi", "ssid");
}

async function wpaPassphrasePsk(ssid: string, passphrase: string): Promise<string | undefined> {
  const r = await execa("wpa_passphrase", [ssid, passphrase], { timeout: 10_000 });
  return /^\s*psk=([0-9a-f]{64})$/m.exec(r.stdout)?.[1];
}

function wifiConfig(ssid: string, iface: "eth0" | "wlan0"): TestConfig {
  const config = baseConfig();
  config.network.interface = iface;
  config.network.wifi = { ssid, passphrase: { env: "PIBAKE_TEST_WIFI_PASSPHRASE" }, country: "DE" };
  return config;
}

const PASSPHRASE = `wifi 'pass' "w0rd" $x \`y\` \\z`;
const ENV = { ...DEFAULT_SECRET_ENV, PIBAKE_TEST_WIFI_PASSPHRASE: PASSPHRASE };

describe("NetworkManager reads the rendered keyfiles back intact", () => {
  it("Ethernet: uuid, autoconnect(-priority), interface, address1, dns as a;b;, ignore-auto-dns", async () => {
    const fx = await renderFixture();
    try {
      const text = fx.overlayText(LAN);
      const rendered = parseKeyfile(text);
      const normalized = parseKeyfile(await nmcliOffline(text, "connection.autoconnect", "yes"));
      expectKeysIntact(rendered, normalized);
      expect(get(normalized, "connection", "id")).toBe("pibake-lan");
      expect(get(normalized, "connection", "uuid")).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(get(normalized, "connection", "uuid")).toBe(get(rendered, "connection", "uuid"));
      expect(get(normalized, "connection", "type")).toBe("ethernet");
      expect(get(normalized, "connection", "interface-name")).toBe("eth0");
      expect(get(normalized, "connection", "autoconnect-priority")).toBe("100");
      expect(get(normalized, "ipv4", "method")).toBe("manual");
      expect(get(normalized, "ipv4", "address1")).toBe("192.168.50.10/24,192.168.50.1");
      expect(get(normalized, "ipv4", "dns")).toBe("192.168.50.1;9.9.9.9;");
      expect(get(normalized, "ipv4", "ignore-auto-dns")).toBe("true");
      expect(normalized.has("wifi")).toBe(false);
      // Read without touching autoconnect, the profile still autoconnects (true is not written back)…
      const untouched = parseKeyfile(await nmcliOffline(text, "ipv6.method", "auto"));
      expect(get(untouched, "connection", "autoconnect")).toBeUndefined();
      // …while a profile that said false would say so: the check above can fail.
      const off = parseKeyfile(await nmcliOffline(text.replace("autoconnect=true", "autoconnect=false"), "ipv6.method", "auto"));
      expect(get(off, "connection", "autoconnect")).toBe("false");
      // The same reading, against a file NetworkManager would not take as written: the check is not blind.
      const broken = parseKeyfile(await nmcliOffline(text.replace(/^dns=.*$/m, "dns=192.168.50.1,9.9.9.9"), "ipv6.method", "auto"));
      expect(get(broken, "ipv4", "dns")).not.toBe("192.168.50.1;9.9.9.9;");
    } finally {
      fx.cleanup();
    }
  });

  it("Ethernet plus Wi-Fi: the separate Wi-Fi profile keeps an SSID with spaces and ';' and the 64-hex PSK", async () => {
    const ssid = "Home WiFi; 2.4 GHz";
    const fx = await renderFixture({ config: wifiConfig(ssid, "eth0"), env: ENV });
    try {
      expect(parseKeyfile(fx.overlayText(LAN)).has("wifi")).toBe(false);
      const text = fx.overlayText(WIFI);
      const rendered = parseKeyfile(text);
      const normalized = parseKeyfile(await nmcliOffline(text, "connection.autoconnect", "yes"));
      expectKeysIntact(rendered, normalized);
      expect(get(normalized, "connection", "type")).toBe("wifi");
      expect(get(normalized, "connection", "interface-name")).toBe("wlan0");
      expect(get(normalized, "connection", "autoconnect-priority")).toBe("50");
      expect(get(normalized, "connection", "uuid")).not.toBe(get(parseKeyfile(fx.overlayText(LAN)), "connection", "uuid"));
      expect(get(normalized, "ipv4", "method")).toBe("auto");
      expect(get(normalized, "wifi", "ssid")).toBe(await canonicalSsidLine(text, ssid));
      expect(get(normalized, "wifi", "ssid")).toBe("Home WiFi\\\\; 2.4 GHz");
      expect(get(normalized, "wifi-security", "key-mgmt")).toBe("wpa-psk");
      const psk = get(normalized, "wifi-security", "psk");
      expect(psk).toMatch(/^[0-9a-f]{64}$/);
      expect(psk).toBe(await wpaPassphrasePsk(ssid, PASSPHRASE));
      expect(text).not.toContain(PASSPHRASE);
    } finally {
      fx.cleanup();
    }
  });

  it("Wi-Fi only (wlan0): the static profile is a Wi-Fi profile with SSID, PSK and the static address", async () => {
    const ssid = "Café ☕; attic";
    const fx = await renderFixture({ config: wifiConfig(ssid, "wlan0"), env: ENV });
    try {
      expect(fx.rendered.overlay.map((f) => f.path)).not.toContain(WIFI);
      const text = fx.overlayText(LAN);
      const rendered = parseKeyfile(text);
      const normalized = parseKeyfile(await nmcliOffline(text, "connection.autoconnect", "yes"));
      expectKeysIntact(rendered, normalized);
      expect(get(normalized, "connection", "type")).toBe("wifi");
      expect(get(normalized, "connection", "interface-name")).toBe("wlan0");
      expect(get(normalized, "connection", "autoconnect-priority")).toBe("100");
      expect(get(normalized, "ipv4", "method")).toBe("manual");
      expect(get(normalized, "ipv4", "address1")).toBe("192.168.50.10/24,192.168.50.1");
      expect(get(normalized, "ipv4", "dns")).toBe("192.168.50.1;9.9.9.9;");
      expect(get(normalized, "ipv4", "ignore-auto-dns")).toBe("true");
      expect(get(normalized, "wifi", "ssid")).toBe(await canonicalSsidLine(text, ssid));
      expect(get(normalized, "wifi-security", "psk")).toBe(await wpaPassphrasePsk(ssid, PASSPHRASE));
    } finally {
      fx.cleanup();
    }
  });

  it("keeps SSIDs that key-file syntax would change: backslashes, edge blanks, byte-list look-alikes, line breaks", async () => {
    // Each was read as another SSID (or let the SSID add keyfile lines) when written as it is.
    const ssids = ["back\\slash", " lead and trail ", "98;32;", "12345", "a\\;b", "x\n[ipv4]\nmethod=disabled"];
    for (const ssid of ssids) {
      const fx = await renderFixture({ config: wifiConfig(ssid, "eth0"), env: ENV, stateDir: undefined });
      try {
        const text = fx.overlayText(WIFI);
        const rendered = parseKeyfile(text);
        const normalized = parseKeyfile(await nmcliOffline(text, "connection.autoconnect", "yes"));
        expectKeysIntact(rendered, normalized);
        expect(get(normalized, "wifi", "ssid"), JSON.stringify(ssid)).toBe(await canonicalSsidLine(text, ssid));
        expect(get(normalized, "ipv4", "method")).toBe("auto");
        expect(get(normalized, "wifi-security", "psk")).toBe(await wpaPassphrasePsk(ssid, PASSPHRASE));
      } finally {
        fx.cleanup();
      }
    }
  });
});
