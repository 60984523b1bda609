import { createHash } from "node:crypto";
import type { Model } from "../config/model.js";

/**
 * What pi-gen's config does to a system, as one record derived once from the
 * model: pi-gen's build takes it through its config file
 * (stages/pi-gen.config.hbs), a build from an image applies it to the image
 * (src/engines/base-image/system.ts). The first user's password is not in
 * it: the shared stage sets that from its hash for both engines.
 */
export interface SystemSettings {
  release: string;
  arch: string;
  hostname: string;
  timezone: string;
  locale: string;
  keyboard: { keymap: string; layout: string };
  user: { name: string; sshKeys: string[]; passwordSsh: boolean };
  /** The Wi-Fi regulatory domain (WPA_COUNTRY), when the Pi uses Wi-Fi. */
  wifiCountry?: string;
  /** Always on: the broker is managed over SSH. */
  ssh: true;
  /** Always on: no first-boot rename of the first user. */
  disableUserRename: true;
}

export function systemSettings(model: Model): SystemSettings {
  return {
    release: model.image.release,
    arch: model.image.arch,
    hostname: model.image.hostname,
    timezone: model.image.timezone,
    locale: model.image.locale,
    keyboard: { ...model.image.keyboard },
    user: { name: model.user.name, sshKeys: [...model.user.sshKeys], passwordSsh: model.user.passwordSsh },
    ...(model.network.wifi ? { wifiCountry: model.network.wifi.country } : {}),
    ssh: true,
    disableUserRename: true,
  };
}

/**
 * The one "has the base system changed" digest: pi-gen rebuilds its base
 * stages when it changes, a build from a pibake image re-runs the system
 * step when it changes.
 */
export function systemDigest(settings: SystemSettings): string {
  return createHash("sha256")
    .update(JSON.stringify({ v: 2, ...settings }))
    .digest("hex");
}
