/**
 * What pi-gen's own config (pi-gen.config) would have done to the image,
 * done to a base image instead: hostname, the first user with its password
 * and SSH keys, SSH on, locale, time zone, keyboard, Wi-Fi country, and no
 * first-boot wizard that would rename the user or ask for a password again.
 *
 * Plain file edits happen on the host (pure functions below, unit-tested);
 * what needs the image's own programs (usermod, locale-gen, systemctl) is a
 * script for its chroot, run as a pi-gen NN-run-chroot.sh.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { uncommentedLines } from "../../host/shell.js";
import path from "node:path";
import type { ImageRoot } from "../../host/image-root.js";
import { PibakeError } from "../../errors.js";
import type { Model } from "../../config/model.js";
import { renderTemplateFile } from "../../render/templates.js";
import { stagesDir } from "../../paths.js";
import { readMarker, installedPackages, type ImageMarker } from "./marker.js";
import { systemDigest, type SystemSettings } from "../../render/system.js";

export interface BaseFacts {
  /** VERSION_CODENAME from /etc/os-release: bookworm, trixie… */
  release?: string;
  prettyName: string;
  arch: "arm64" | "armhf" | "x86_64" | "unknown";
  /** Where the boot partition is mounted on the Pi: /boot/firmware (bookworm and later) or /boot. */
  bootMount: string;
  marker?: ImageMarker;
  installed: Set<string>;
  /** Free bytes in the root file system (for root). */
  freeBytes: number;
  firstUser?: { name: string; uid: number; gid: number; home: string };
  /** What only a boot leaves behind (host keys, a machine id, cloud-init's instance data): empty for an image as downloaded. */
  bootTraces: string[];
}

/** ELF e_machine of the image's /bin/bash: what the image runs on. */
export function elfArch(head: Buffer): BaseFacts["arch"] {
  if (head.length < 20 || head.readUInt32BE(0) !== 0x7f454c46) return "unknown";
  const machine = head.readUInt16LE(18);
  if (machine === 0xb7) return "arm64";
  if (machine === 0x28) return "armhf";
  if (machine === 0x3e) return "x86_64";
  return "unknown";
}

export function parseOsRelease(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!.replace(/^"(.*)"$/, "$1").replace(/^'(.*)'$/, "$1");
  }
  return out;
}

/** The boot partition's mount point, from the image's fstab: /boot/firmware on bookworm and trixie. */
export function bootMountFromFstab(fstab: string): string {
  for (const line of uncommentedLines(fstab)) {
    const f = line.split(/\s+/);
    if (f.length < 3 || !/^vfat$|^msdos$|^fat$/.test(f[2]!)) continue;
    // Only a place under /boot: the mount point is made inside the image, and "/boot/../etc" is not the boot partition's.
    const mount = path.posix.normalize(f[1]!);
    if (mount === "/boot" || mount.startsWith("/boot/")) return mount;
  }
  return "/boot/firmware";
}

export function firstUserOf(passwd: string): BaseFacts["firstUser"] {
  for (const line of passwd.split("\n")) {
    const f = line.split(":");
    if (f.length >= 7 && f[2] === "1000") return { name: f[0]!, uid: 1000, gid: Number(f[3]), home: f[5]! };
  }
  return undefined;
}

export function inspectRootfs(root: ImageRoot): BaseFacts {
  const osRelease = parseOsRelease(root.readText("/etc/os-release") ?? "");
  const bash = root.head("/bin/bash", 64);
  const arch = bash ? elfArch(bash) : "unknown";
  const marker = readMarker(root);
  const firstUser = firstUserOf(root.readText("/etc/passwd") ?? "");
  return {
    ...(osRelease.VERSION_CODENAME ? { release: osRelease.VERSION_CODENAME } : {}),
    prettyName: osRelease.PRETTY_NAME ?? "an unknown system",
    arch,
    bootMount: bootMountFromFstab(root.readText("/etc/fstab") ?? ""),
    ...(marker ? { marker } : {}),
    installed: installedPackages(root),
    freeBytes: root.freeBytes(),
    ...(firstUser ? { firstUser } : {}),
    bootTraces: bootTraces(root),
  };
}

/**
 * Traces of an earlier boot. Raspberry Pi OS ships without SSH host keys, with
 * /etc/machine-id "uninitialized" (trixie) or empty (bookworm) and without
 * cloud-init's instance data, so that every Pi makes its own at first boot.
 */
export function bootTraces(root: ImageRoot): string[] {
  const traces: string[] = [];
  const keys = root
    .list("/etc/ssh")
    .filter((f) => /^ssh_host_.*_key$/.test(f))
    .sort();
  if (keys.length) traces.push(`SSH host keys (${keys.map((k) => `/etc/ssh/${k}`).join(", ")})`);
  if (/^[0-9a-f]{32}\s*$/.test(root.readText("/etc/machine-id") ?? "")) traces.push("a machine id in /etc/machine-id");
  if (root.exists("/var/lib/cloud/instance") || root.list("/var/lib/cloud/instances").length > 0) {
    traces.push("cloud-init's instance data (/var/lib/cloud/instances)");
  }
  return traces;
}

/** An image that has been booted carries one machine's identity and has spent its first boot: refused. */
export function checkNeverBooted(facts: Pick<BaseFacts, "bootTraces" | "release" | "arch">, label: string): void {
  if (facts.bootTraces.length === 0) return;
  throw new PibakeError(
    `${label} has been booted before: it holds ${facts.bootTraces.join(", ")}. ` +
      `Every Pi made from it would share them, and its first-boot set-up has already run. ` +
      `Start from the image as downloaded (Raspberry Pi OS Lite ${facts.release ?? ""} ${facts.arch === "unknown" ? "" : facts.arch}, the .img.xz from https://www.raspberrypi.com/software/operating-systems/), not from a card or a copy of one that has been in a Pi`.replace(
        / {2,}/g,
        " ",
      ),
    2,
  );
}

/** The base must be the release and architecture the config asks for: packages and the stage are made for them. */
export function checkBaseMatches(facts: BaseFacts, model: Model, label: string): void {
  if (facts.arch === "unknown") {
    throw new PibakeError(`${label}: the root partition holds no /bin/bash that pibake recognises: is this a Raspberry Pi OS image?`);
  }
  if (facts.arch !== model.image.arch) {
    throw new PibakeError(
      `${label} is an ${facts.arch} image but the config says image.arch "${model.image.arch}": use a ${model.image.arch} Raspberry Pi OS image, or set image.arch to "${facts.arch}"`,
    );
  }
  if (!facts.release) {
    throw new PibakeError(`${label}: /etc/os-release names no release (VERSION_CODENAME): pibake needs Raspberry Pi OS bookworm or trixie`);
  }
  if (facts.release !== model.image.release) {
    const supported = facts.release === "bookworm" || facts.release === "trixie";
    throw new PibakeError(
      `${label} is ${facts.prettyName} (${facts.release}) but the config says image.release "${model.image.release}": ` +
        (supported ? `use a ${model.image.release} image, or set image.release to "${facts.release}"` : `pibake supports bookworm and trixie images`),
    );
  }
}

// ---- Host-side edits (pure) -------------------------------------------------

export function hostsWithHostname(hosts: string, hostname: string): string {
  const lines = hosts.split("\n");
  const i = lines.findIndex((l) => /^127\.0\.1\.1\s/.test(l));
  const entry = `127.0.1.1\t${hostname}`;
  if (i >= 0) lines[i] = entry;
  else {
    if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
    lines.push(entry, "");
  }
  return lines.join("\n");
}

/** /etc/default/keyboard with XKBLAYOUT set, as pi-gen's stage1 does with KEYBOARD_KEYMAP. */
export function keyboardWithLayout(text: string | undefined, keymap: string): string {
  const base = text ?? '# KEYBOARD CONFIGURATION FILE\n\nXKBMODEL="pc105"\nXKBLAYOUT="gb"\nXKBVARIANT=""\nXKBOPTIONS=""\n\nBACKSPACE="guess"\n';
  return /^XKBLAYOUT=/m.test(base) ? base.replace(/^XKBLAYOUT=.*$/m, `XKBLAYOUT="${keymap}"`) : `${base.replace(/\n?$/, "\n")}XKBLAYOUT="${keymap}"\n`;
}

export function keyboardLayoutOf(text: string | undefined): string | undefined {
  return text ? /^XKBLAYOUT="?([^"\n]*)"?/m.exec(text)?.[1] : undefined;
}

/** The locale.gen line for a locale: "en_GB.UTF-8 UTF-8", "de_DE ISO-8859-1". */
export function localeGenLine(locale: string): string {
  const charset = locale.includes(".") ? locale.split(".")[1]!.split("@")[0]! : "ISO-8859-1";
  return `${locale} ${charset}`;
}

/** /etc/locale.gen with the locale enabled; `changed` when locale-gen must run. */
export function enableLocale(text: string, locale: string): { text: string; changed: boolean } {
  const line = localeGenLine(locale);
  const esc = line.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  if (new RegExp(`^${esc}\\s*$`, "m").test(text)) return { text, changed: false };
  const commented = new RegExp(`^#\\s*${esc}\\s*$`, "m");
  if (commented.test(text)) return { text: text.replace(commented, line), changed: true };
  return { text: `${text.replace(/\n?$/, "\n")}${line}\n`, changed: true };
}

/** cmdline.txt with the Wi-Fi regulatory domain, as raspi-config's do_wifi_country sets it. */
export function cmdlineWithRegdom(cmdline: string, country: string): string {
  const one = cmdline.replace(/\n[\s\S]*$/, "").trim();
  const param = `cfg80211.ieee80211_regdom=${country}`;
  return (/cfg80211\.ieee80211_regdom=\S*/.test(one) ? one.replace(/cfg80211\.ieee80211_regdom=\S*/, param) : `${one} ${param}`) + "\n";
}

/** The chroot part of the system settings: a template, as every script that lands in the image is. */
const SYSTEM_SCRIPT = path.join(stagesDir, "base-system/00-system/00-run-chroot.sh.hbs");

export interface SystemPlan {
  /** The chroot script (NN-run-chroot.sh). */
  script: string;
  /** Digest of the settings the script applies: when the base's marker has the same, the script has nothing to do. */
  digest: string;
  notes: string[];
}

/**
 * Edit the image's files for the settings pi-gen's config carries and return
 * the chroot script for the rest. `bootDir` is the boot partition's files.
 */
export function applySystemSettings(root: ImageRoot, bootDir: string, system: SystemSettings, passwordHash: string): SystemPlan {
  const notes: string[] = [];
  setHostname(root, system.hostname);
  setTimezone(root, system.timezone);
  const keyboardChanged = setKeyboard(root, system.keyboard.keymap);
  const localeGen = setLocale(root, system.locale, notes);
  if (system.wifiCountry) setWifiCountry(bootDir, system.wifiCountry, notes);
  removeFirstBootRename(root, bootDir, notes);

  const unitExists = (u: string) => ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"].some((d) => root.exists(`/${d}/${u}`));
  const user = system.user.name;
  const enable = ["ssh.service"].filter(unitExists);
  if (!unitExists("ssh.service")) notes.push("the image has no ssh.service (openssh-server): SSH is not enabled");
  if (unitExists("getty@.service")) enable.push("getty@tty1.service");
  const script = renderTemplateFile(SYSTEM_SCRIPT, {
    user,
    passwordHash,
    sshKeys: system.user.sshKeys,
    localeGen,
    keyboard: keyboardChanged ? system.keyboard : false,
    enable: enable.join(" "),
  });
  return { script, digest: systemDigest(system), notes };
}

/** Hostname (pi-gen stage1/02-net-tweaks). */
function setHostname(root: ImageRoot, hostname: string): void {
  root.write("/etc/hostname", `${hostname}\n`);
  root.write("/etc/hosts", hostsWithHostname(root.readText("/etc/hosts") ?? "127.0.0.1\tlocalhost\n", hostname));
}

/** Time zone (pi-gen stage0/01-locale and TIMEZONE_DEFAULT): one the image has. */
function setTimezone(root: ImageRoot, tz: string): void {
  if (!root.exists(`/usr/share/zoneinfo/${tz}`)) {
    throw new PibakeError(`time zone "${tz}" is not in the image (no /usr/share/zoneinfo/${tz}): check image.timezone in the config`);
  }
  root.symlink("/etc/localtime", `/usr/share/zoneinfo/${tz}`);
  root.write("/etc/timezone", `${tz}\n`);
}

/** Keyboard (KEYBOARD_KEYMAP / KEYBOARD_LAYOUT); whether the layout changed, for the chroot script. */
function setKeyboard(root: ImageRoot, keymap: string): boolean {
  const kbText = root.readText("/etc/default/keyboard");
  const keyboardChanged = keyboardLayoutOf(kbText) !== keymap;
  root.write("/etc/default/keyboard", keyboardWithLayout(kbText, keymap));
  return keyboardChanged;
}

/** Locale (LOCALE_DEFAULT): enabled in locale.gen and made LANG; whether the chroot script must generate it, because it is new. */
function setLocale(root: ImageRoot, locale: string, notes: string[]): boolean {
  let localeGen = false;
  const localeGenText = root.readText("/etc/locale.gen");
  if (localeGenText !== undefined) {
    const r = enableLocale(localeGenText, locale);
    localeGen = r.changed;
    if (r.changed) root.write("/etc/locale.gen", r.text);
  } else notes.push(`the image has no /etc/locale.gen (package locales): LANG is set to ${locale} but the locale is not generated`);
  const defLocale = root.readText("/etc/default/locale") ?? "";
  if (!new RegExp(`^LANG=${locale.replace(/\./g, "\\.")}$`, "m").test(defLocale)) {
    root.write("/etc/default/locale", /^LANG=/m.test(defLocale) ? defLocale.replace(/^LANG=.*$/m, `LANG=${locale}`) : `${defLocale}LANG=${locale}\n`);
  }
  return localeGen;
}

/**
 * Wi-Fi country (WPA_COUNTRY): regulatory domain on the kernel command line, Wi-Fi unblocked.
 * The boot partition's files are pibake's own copy (mtools), and FAT has no links.
 */
function setWifiCountry(bootDir: string, country: string, notes: string[]): void {
  const cmdlineFile = path.join(bootDir, "cmdline.txt");
  if (existsSync(cmdlineFile)) writeFileSync(cmdlineFile, cmdlineWithRegdom(readFileSync(cmdlineFile, "utf8"), country));
  else notes.push(`the boot partition has no cmdline.txt: the Wi-Fi country ${country} is not set there`);
}

/** No first-boot rename from the boot partition, nor the desktop's wizard (the stage masks Lite's). */
function removeFirstBootRename(root: ImageRoot, bootDir: string, notes: string[]): void {
  for (const f of ["userconf.txt", "userconf"]) rmSync(path.join(bootDir, f), { force: true });
  if (root.exists("/etc/xdg/autostart/piwiz.desktop")) {
    root.remove("/etc/xdg/autostart/piwiz.desktop");
    notes.push("removed /etc/xdg/autostart/piwiz.desktop (first-boot user rename)");
  }
}
