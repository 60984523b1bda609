/**
 * The fast path's edits: every file a regeneration writes into the image,
 * with the content, mode and owner the root path gives it (the overlay as
 * the stage's tar and chown leave it, the system settings as
 * applySystemSettings and usermod leave them, build.json). Reading the
 * image's current files is the only I/O; the edits themselves are applied by
 * apply.ts.
 */
import { PibakeError } from "../../../errors.js";
import type { Ext4Volume } from "../../../image/ext4-volume.js";
import type { Rendered } from "../../../render/index.js";
import type { SystemSettings } from "../../../render/system.js";
import { hostsWithHostname, keyboardWithLayout } from "../system.js";
import { MARKER_PATH, markerText, type ImageMarker } from "../marker.js";

/** An owner by name (looked up in the image's /etc/passwd and /etc/group) or by number (kept as the file had it). */
export type Owner = string | number;

export type ImageEdit =
  | { kind: "file"; path: string; content: Buffer; mode: number; owner: Owner; group: Owner }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "remove"; path: string };

export interface FastPlanInput {
  rendered: Rendered;
  /** The base's record, and the new one. */
  before: ImageMarker;
  after: ImageMarker;
  passwordHash: string;
  /** Days since 1970-01-01, for /etc/shadow's date of the last change (usermod sets it). */
  today: number;
}

export async function planEdits(vol: Ext4Volume, input: FastPlanInput): Promise<ImageEdit[]> {
  return [
    ...(await systemEdits(vol, input.rendered.system)),
    ...(await userEdits(vol, input)),
    ...overlayRemovals(input.before, input.rendered),
    ...overlayWrites(input.rendered),
    { kind: "file", path: `/${MARKER_PATH}`, content: Buffer.from(markerText(input.after)), mode: 0o644, owner: "root", group: "root" },
  ];
}

/** A file the root path edits in place (through a link in its last component): same owner, mode 0644 as ImageRoot.write sets it. */
async function edited(vol: Ext4Volume, p: string, content: string, mode = 0o644): Promise<ImageEdit> {
  const at = await vol.resolveLast(p);
  const st = await vol.lstat(at);
  return { kind: "file", path: at, content: Buffer.from(content), mode, owner: st?.uid ?? 0, group: st?.gid ?? 0 };
}

/** Hostname, hosts, time zone, keyboard and LANG, as applySystemSettings writes them. */
async function systemEdits(vol: Ext4Volume, system: SystemSettings): Promise<ImageEdit[]> {
  const edits: ImageEdit[] = [
    await edited(vol, "/etc/hostname", `${system.hostname}\n`),
    await edited(vol, "/etc/hosts", hostsWithHostname((await vol.readText(await vol.resolveLast("/etc/hosts"))) ?? "127.0.0.1\tlocalhost\n", system.hostname)),
  ];
  const tz = system.timezone;
  if (!(await vol.lstat(await vol.resolveLast(`/usr/share/zoneinfo/${tz}`)))) {
    throw new PibakeError(`time zone "${tz}" is not in the image (no /usr/share/zoneinfo/${tz}): check image.timezone in the config`, 2);
  }
  edits.push({ kind: "symlink", path: "/etc/localtime", target: `/usr/share/zoneinfo/${tz}` });
  edits.push(await edited(vol, "/etc/timezone", `${tz}\n`));
  const keyboard = await vol.readText(await vol.resolveLast("/etc/default/keyboard"));
  edits.push(await edited(vol, "/etc/default/keyboard", keyboardWithLayout(keyboard, system.keyboard.keymap)));
  const defLocale = (await vol.readText(await vol.resolveLast("/etc/default/locale"))) ?? "";
  if (!new RegExp(`^LANG=${system.locale.replace(/\./g, "\\.")}$`, "m").test(defLocale)) {
    const text = /^LANG=/m.test(defLocale) ? defLocale.replace(/^LANG=.*$/m, `LANG=${system.locale}`) : `${defLocale}LANG=${system.locale}\n`;
    edits.push(await edited(vol, "/etc/default/locale", text));
  }
  if (await vol.lstat("/etc/xdg/autostart/piwiz.desktop")) edits.push({ kind: "remove", path: "/etc/xdg/autostart/piwiz.desktop" });
  return edits;
}

/** The first user's password hash in /etc/shadow (usermod --password) and SSH keys (the system script's authorized_keys). */
async function userEdits(vol: Ext4Volume, input: FastPlanInput): Promise<ImageEdit[]> {
  const { user } = input.rendered.system;
  const shadowPath = await vol.resolveLast("/etc/shadow");
  const shadow = await vol.readText(shadowPath);
  const st = await vol.lstat(shadowPath);
  if (shadow === undefined || !st) throw new PibakeError("the image has no /etc/shadow", 2);
  const edits: ImageEdit[] = [
    {
      kind: "file",
      path: shadowPath,
      content: Buffer.from(shadowWithHash(shadow, user.name, input.passwordHash, input.today)),
      mode: st.mode,
      owner: st.uid,
      group: st.gid,
    },
  ];
  if (user.sshKeys.length > 0) {
    const account = accountOf((await vol.readText("/etc/passwd")) ?? "", user.name);
    const content = user.sshKeys.map((k) => `${k}\n`).join("");
    // Its primary group, as `id -gn` gives the system script.
    edits.push({
      kind: "file",
      path: `${account.home}/.ssh/authorized_keys`,
      content: Buffer.from(content),
      mode: 0o600,
      owner: user.name,
      group: account.gid,
    });
  }
  return edits;
}

/** /etc/shadow with `user`'s hash replaced and its date of last change set, as usermod --password leaves it. */
export function shadowWithHash(shadow: string, user: string, hash: string, today: number): string {
  let found = false;
  const lines = shadow.split("\n").map((line) => {
    const f = line.split(":");
    if (f[0] !== user || f.length < 3) return line;
    found = true;
    f[1] = hash;
    f[2] = String(today);
    return f.join(":");
  });
  if (!found) throw new PibakeError(`the image's /etc/shadow has no entry for the first user ${user}`, 2);
  return lines.join("\n");
}

function accountOf(passwd: string, user: string): { home: string; gid: number } {
  const f = passwd
    .split("\n")
    .map((l) => l.split(":"))
    .find((x) => x[0] === user && x.length >= 7);
  if (!f) throw new PibakeError(`the image's /etc/passwd has no user ${user}`, 2);
  return { home: f[5]!, gid: Number(f[3]) };
}

/** Files of the previous overlay that this one no longer has, and the system files earlier versions wrote. */
function overlayRemovals(before: ImageMarker, rendered: Rendered): ImageEdit[] {
  const now = new Set(rendered.overlay.map((f) => f.path));
  const gone = [...before.overlay.filter((p) => !now.has(p)), ...(before.systemFiles ?? [])];
  return gone.map((p) => ({ kind: "remove", path: `/${p}` }));
}

/** The overlay as the stage's tar and chown leave it (the bytes of the files they replace are zeroed, apply.ts). */
function overlayWrites(rendered: Rendered): ImageEdit[] {
  return rendered.overlay.map((f) => ({ kind: "file", path: `/${f.path}`, content: f.content, mode: f.mode, owner: f.owner, group: f.group }));
}
