import path from "node:path";
import { overlaysDir } from "../paths.js";
import { renderTemplateFile } from "./templates.js";
import { NODE_RED_OVERLAY } from "./node-red.js";
import type { View } from "./view.js";

/**
 * What lands on the Pi. Each entry names a file by its path on the Pi; its
 * template is `overlays/<path>.hbs`. Owners are names, resolved inside the
 * image by the stage's chroot script, since the mosquitto user's id is the
 * image's, not the build host's.
 */
export interface OverlaySpec {
  path: string;
  /** Where the file lands when that depends on the config (e.g. the first user's home); default: path. */
  target?: (v: View) => string;
  mode: number;
  owner?: string | ((v: View) => string);
  group?: string | ((v: View) => string);
  when?: (v: View) => boolean;
}

export interface OverlayFile {
  /** Path on the Pi, without the leading slash. */
  path: string;
  content: Buffer;
  mode: number;
  owner: string;
  group: string;
}

const MOSQUITTO = { owner: "mosquitto", group: "mosquitto" } as const;

export const OVERLAY: OverlaySpec[] = [
  // In place of Debian's, which logs to /var/log/mosquitto: the log goes to the journal.
  { path: "etc/mosquitto/mosquitto.conf", mode: 0o644 },
  { path: "etc/mosquitto/conf.d/pibake.conf", mode: 0o644 },
  // A persistence file mosquitto cannot load is moved aside before the broker starts.
  // With ACME: the served pair is made before mosquitto starts (the own CA's until the public one arrives).
  { path: "etc/systemd/system/mosquitto.service.d/50-pibake.conf", mode: 0o644, when: (v) => v.mqtt.persistence || v.tls.acme !== false },
  { path: "usr/local/lib/pibake/mosquitto-db-check.sh", mode: 0o755, when: (v) => v.mqtt.persistence },
  // The journal kept on the card, capped.
  { path: "etc/systemd/journald.conf.d/50-pibake.conf", mode: 0o644 },
  { path: "etc/apt/apt.conf.d/52pibake-unattended-upgrades", mode: 0o644, when: (v) => v.updates !== false },
  // mosquitto reads these after dropping privileges; 2.0.16+ warns about anything looser.
  { path: "etc/mosquitto/passwd", mode: 0o600, ...MOSQUITTO },
  { path: "etc/mosquitto/acl", mode: 0o600, ...MOSQUITTO, when: (v) => v.mqtt.aclFile },
  { path: "etc/mosquitto/certs/server.key", mode: 0o600, ...MOSQUITTO },
  { path: "etc/mosquitto/certs/server.crt", mode: 0o644 },
  { path: "etc/mosquitto/certs/ca.crt", mode: 0o644 },
  // tls.mode "acme": the public certificate, obtained and renewed on the Pi (lego, DNS-01 at freemyip).
  { path: "usr/local/lib/pibake/acme-certificate.sh", mode: 0o755, when: (v) => v.tls.acme !== false },
  { path: "usr/local/lib/pibake/freemyip-txt.sh", mode: 0o755, when: (v) => v.tls.acme !== false },
  { path: "etc/systemd/system/pibake-acme.service", mode: 0o644, when: (v) => v.tls.acme !== false },
  { path: "etc/systemd/system/pibake-acme.timer", mode: 0o644, when: (v) => v.tls.acme !== false },
  { path: "etc/ddclient.conf", mode: 0o600, when: (v) => v.ddns !== false },
  { path: "etc/default/ddclient", mode: 0o644, when: (v) => v.ddns !== false },
  // NetworkManager ignores keyfiles readable by others.
  { path: "etc/NetworkManager/system-connections/pibake-lan.nmconnection", mode: 0o600 },
  {
    path: "etc/NetworkManager/system-connections/pibake-wifi.nmconnection",
    mode: 0o600,
    when: (v) => v.network.wifi !== false && v.network.wifi.separateProfile,
  },
  // trixie images run cloud-init at first boot: it would add the default user, DHCP for the same interface, another hostname.
  { path: "etc/cloud/cloud.cfg.d/99_zz-pibake.cfg", mode: 0o644, when: (v) => v.image.release === "trixie" },
  { path: "etc/ssh/sshd_config.d/50-pibake.conf", mode: 0o644 },
  // The report on the boot partition, for a Pi that does not show up on the network.
  { path: "usr/local/lib/pibake/status.sh", mode: 0o755 },
  { path: "etc/systemd/system/pibake-status.service", mode: 0o644 },
  { path: "etc/systemd/system/pibake-status.timer", mode: 0o644 },
  // The firewall (src/render/firewall.ts) and fail2ban's jails; nftables.service loads the ruleset at boot.
  { path: "etc/nftables.conf", mode: 0o755, when: (v) => v.firewall !== false },
  { path: "etc/fail2ban/jail.d/pibake.local", mode: 0o644, when: (v) => v.firewall !== false },
  { path: "etc/fail2ban/filter.d/pibake-mosquitto.conf", mode: 0o644, when: (v) => v.firewall !== false },
  ...NODE_RED_OVERLAY,
];

export function templateFor(spec: OverlaySpec): string {
  return path.join(overlaysDir, `${spec.path}.hbs`);
}

export function renderOverlay(view: View, specs: OverlaySpec[] = OVERLAY): OverlayFile[] {
  return specs
    .filter((s) => !s.when || s.when(view))
    .map((s) => ({
      path: s.target ? s.target(view) : s.path,
      content: Buffer.from(renderTemplateFile(templateFor(s), view)),
      mode: s.mode,
      owner: (typeof s.owner === "function" ? s.owner(view) : s.owner) ?? "root",
      group: (typeof s.group === "function" ? s.group(view) : s.group) ?? "root",
    }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
