import { createHash } from "node:crypto";
import type { Model } from "../config/model.js";
import { NPM_RELEASE, type NodeRedVersions } from "../registry/node-red.js";
import { encryptCredentials } from "../secrets/node-red.js";
import type { Secrets } from "../secrets/index.js";
import type { OverlaySpec } from "./overlay.js";
import type { View } from "./view.js";

/**
 * Node-RED on the Pi: what the templates under overlays/ see, and which of
 * them land where. Node-RED runs as the first user with ~/.node-red as its
 * user directory; Node-RED itself goes to /usr/local (npm --global).
 */
export interface NodeRedView {
  version: string;
  /** The npm that install-npm.sh puts in /usr/local. */
  npm: typeof NPM_RELEASE;
  /** npm installs Node-RED in the image's chroot; the first-boot unit then only enables the service. */
  installAtBuild: boolean;
  port: number;
  /** The first user, who runs Node-RED and owns its files. */
  user: string;
  home: string;
  userDir: string;
  admin: { user: string; hash: string };
  credentialSecret: string;
  /** flows_cred.json's "$": the MQTT login, encrypted with credentialSecret. */
  credentials: string;
  dashboard:
    | false
    | {
        package: string;
        version: string;
        flowfuse: boolean;
        classic: boolean;
        /** Where it is served, e.g. "/dashboard" or "/ui". */
        path: string;
      };
  /** Basic authentication in front of the dashboard (and other HTTP endpoints of flows), with the admin's login. */
  protectDashboard: false | { user: string; scryptHash: string };
  mqtt: { host: string; port: number; user: string };
  exampleTopic: string;
  /** Node ids of flows.json: fixed per image, so that renders repeat and redeploys keep them. */
  ids: Record<"tab" | "broker" | "mqttIn" | "debug" | "uiBase" | "uiTheme" | "uiPage" | "uiGroup" | "uiText" | "uiTab", string>;
  /** Text that holds handlebars-like braces, which the templates cannot write literally. */
  literal: { payload: string };
}

/** A stable 16-hex-digit id, the form Node-RED gives its nodes. */
export function nodeId(...parts: string[]): string {
  return createHash("sha256").update(parts.join("\u0000")).digest("hex").slice(0, 16);
}

export function nodeRedIds(imageName: string): NodeRedView["ids"] {
  const id = (role: string) => nodeId("pibake", imageName, "node-red", role);
  return {
    tab: id("tab"),
    broker: id("mqtt-broker"),
    mqttIn: id("mqtt-in"),
    debug: id("debug"),
    uiBase: id("ui-base"),
    uiTheme: id("ui-theme"),
    uiPage: id("ui-page"),
    uiGroup: id("ui-group"),
    uiText: id("ui-text"),
    uiTab: id("ui-tab"),
  };
}

export function nodeRedView(model: Model, secrets: Secrets): NodeRedView | false {
  const nr = model.nodeRed;
  const s = secrets.nodeRed;
  if (!nr || !s) return false;
  const mqttUser = secrets.mqttUsers.find((u) => u.name === nr.mqttUser);
  if (!mqttUser) throw new Error(`Node-RED's MQTT user "${nr.mqttUser}" is not among the MQTT users: prepare the secrets before rendering`);
  const ids = nodeRedIds(model.image.name);
  const home = `/home/${model.user.name}`;
  const d = s.versions.dashboard;
  return {
    version: s.versions.nodeRed.version,
    npm: NPM_RELEASE,
    installAtBuild: nr.install === "build",
    port: nr.port,
    user: model.user.name,
    home,
    userDir: `${home}/.node-red`,
    admin: { user: nr.admin.user, hash: s.adminHash },
    credentialSecret: s.credentialSecret,
    credentials: encryptCredentials(s.credentialSecret, { [ids.broker]: { user: mqttUser.name, password: mqttUser.password.reveal() } }),
    dashboard: d
      ? {
          package: d.package,
          version: d.version,
          flowfuse: nr.dashboard === "flowfuse",
          classic: nr.dashboard === "classic",
          path: nr.dashboard === "classic" ? "/ui" : "/dashboard",
        }
      : false,
    protectDashboard: nr.protectDashboard && s.dashboardHash ? { user: nr.admin.user, scryptHash: s.dashboardHash } : false,
    mqtt: { host: "localhost", port: model.mqtt.lanPort, user: mqttUser.name },
    exampleTopic: nr.exampleTopic,
    ids,
    literal: { payload: "{{msg.payload}}" },
  };
}

const on = (v: View) => v.nodeRed !== false;
const firstUser = (v: View) => (v.nodeRed ? v.nodeRed.user : "root");
/** Files of ~/.node-red: their templates sit under overlays/home/{{user}}/.node-red/. */
const userFile = (name: string, mode: number, when: (v: View) => boolean = on): OverlaySpec => ({
  path: `home/{{user}}/.node-red/${name}`,
  target: (v) => `${v.nodeRed ? v.nodeRed.userDir.slice(1) : "home/root/.node-red"}/${name}`,
  mode,
  owner: firstUser,
  group: firstUser,
  when,
});

export const NODE_RED_OVERLAY: OverlaySpec[] = [
  { path: "etc/systemd/system/pibake-firstboot.service", mode: 0o644, when: on },
  { path: "etc/systemd/system/nodered.service", mode: 0o644, when: on },
  { path: "usr/local/lib/pibake/firstboot.sh", mode: 0o755, when: on },
  { path: "usr/local/lib/pibake/install-npm.sh", mode: 0o755, when: on },
  // settings.js holds the password hash and credentialSecret.
  userFile("settings.js", 0o600),
  userFile("flows.json", 0o644),
  userFile("flows_cred.json", 0o600),
  // Lists the dashboard, which the first boot (or the build) installs with npm in ~/.node-red.
  userFile("package.json", 0o644),
];

/** What the build manifest records about Node-RED. */
export function nodeRedManifest(model: Model, secrets: Secrets): { nodeRed: (NodeRedVersions & { install: string; port: number; npm: string }) | false } {
  const nr = model.nodeRed;
  const v = secrets.nodeRed?.versions;
  return { nodeRed: nr && v ? { ...v, install: nr.install, port: nr.port, npm: NPM_RELEASE.version } : false };
}

const SOURCE_TEXT: Record<string, string> = {
  registry: "the newest that runs on the OS's Node, from the registry",
  fallback: "pinned fallback: the registry was not asked or did not answer",
  config: "nodeRed.version",
};

/** What `pibake render` says about Node-RED (no secrets: the generated password is named by its file). */
export function nodeRedSummary(model: Model, secrets: Secrets): string[] {
  const nr = model.nodeRed;
  const s = secrets.nodeRed;
  if (!nr || !s) return ["Node-RED:    off"];
  const v = s.versions;
  const url = `http://${model.network.address}:${nr.port}`;
  const lines = [
    `Node-RED:    ${v.nodeRed.version} (${SOURCE_TEXT[v.nodeRed.source]}; Node ${v.node} on ${v.release}), installed ${nr.install === "build" ? "into the image" : "on first boot"}`,
    `  editor:    ${url}/ as ${nr.admin.user}, password ${s.adminPasswordFile ? `generated, in ${s.adminPasswordFile}` : "from the config"}`,
  ];
  if (v.dashboard) {
    const path = nr.dashboard === "classic" ? "/ui" : "/dashboard";
    lines.push(`  dashboard: ${url}${path} (${v.dashboard.package} ${v.dashboard.version}${nr.dashboard === "classic" ? ", deprecated upstream" : ""})`);
  }
  lines.push(`  MQTT user: ${nr.mqttUser}${nr.mqttUserGenerated ? " (added by pibake, password in the state directory)" : ""}`);
  return lines;
}
