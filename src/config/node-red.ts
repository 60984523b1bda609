import type { ConfigIssue } from "../errors.js";
import type { NodeRed, Secret } from "./model.js";
import type { ParsedConfig, SecretRef } from "./schema.js";
import { mqttListenerPorts } from "./ports.js";

/** The MQTT user pibake adds for Node-RED when the config names none. */
export const GENERATED_MQTT_USER = "nodered";

type Resolve = (ref: SecretRef, where: string, check?: (value: string) => string | undefined) => Secret;

/** bcrypt reads at most 72 bytes of a password: a longer one would be cut without a word. */
function bcryptPassword(v: string): string | undefined {
  if (v.length < 8) return "is shorter than 8 characters";
  if (Buffer.byteLength(v) > 72) return "is longer than 72 bytes, the most that bcrypt (Node-RED's password hash) reads";
  return undefined;
}

export function nodeRedModel(c: ParsedConfig["nodeRed"], resolve: Resolve): NodeRed {
  return {
    install: c.install,
    port: c.port,
    admin: {
      user: c.admin.user,
      ...(c.admin.password ? { password: resolve(c.admin.password, "nodeRed.admin.password", bcryptPassword) } : {}),
    },
    dashboard: c.dashboard,
    protectDashboard: c.protectDashboard,
    mqttUser: c.mqttUser ?? GENERATED_MQTT_USER,
    mqttUserGenerated: c.mqttUser === undefined,
    exampleTopic: c.exampleTopic,
    ...(c.version ? { version: c.version } : {}),
  };
}

/**
 * Whether an ACL topic pattern allows everything a subscription filter can
 * receive: `home/#` covers `home/sensors/+`, `home/+` does not cover `home/#`.
 */
export function topicCovers(pattern: string, filter: string): boolean {
  const p = pattern.split("/");
  const f = filter.split("/");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === "#") return true;
    if (i >= f.length || f[i] === "#") return false;
    if (p[i] === "+") {
      continue;
    }
    if (p[i] !== f[i]) return false;
  }
  return p.length === f.length;
}

/** Rules across nodeRed and the rest of the config. */
export function nodeRedIssues(c: ParsedConfig): ConfigIssue[] {
  const n = c.nodeRed;
  if (!n.enabled) return [];
  const issues: ConfigIssue[] = [];
  const clash = mqttListenerPorts(c).find((l) => l.port === n.port);
  if (clash) issues.push({ path: "nodeRed.port", message: `${n.port} is also ${clash.path}: Node-RED needs a port of its own` });
  if (n.mqttUser !== undefined) {
    const user = c.mqtt.users.find((u) => u.name === n.mqttUser);
    if (!user) {
      issues.push({
        path: "nodeRed.mqttUser",
        message: `"${n.mqttUser}" is not one of mqtt.users (${c.mqtt.users.map((u) => `"${u.name}"`).join(", ")}): add it there, or leave nodeRed.mqttUser out and pibake adds a user "${GENERATED_MQTT_USER}" for Node-RED`,
      });
    } else if (user.topics && !user.topics.some((t) => t.access !== "write" && topicCovers(t.topic, n.exampleTopic))) {
      issues.push({
        path: "nodeRed.exampleTopic",
        message: `"${n.exampleTopic}" is not readable by MQTT user "${n.mqttUser}" (nodeRed.mqttUser), so the example flow would receive nothing: give that user { "access": "read", "topic": "${n.exampleTopic}" } or choose another topic`,
      });
    }
  } else {
    const i = c.mqtt.users.findIndex((u) => u.name === GENERATED_MQTT_USER);
    if (i >= 0) {
      issues.push({
        path: `mqtt.users[${i}].name`,
        message: `"${GENERATED_MQTT_USER}" is the user pibake adds for Node-RED: set nodeRed.mqttUser to "${GENERATED_MQTT_USER}" to let Node-RED use this one, or rename it`,
      });
    }
  }
  return issues;
}
