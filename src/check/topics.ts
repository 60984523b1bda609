import type { MqttUser } from "../config/model.js";

/** Whether an MQTT topic filter (with + and #) matches a topic name. */
export function filterMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

/** A topic name inside a filter: each wildcard becomes a level of pibake's own. */
export function topicIn(filter: string, tag: string): string {
  return filter
    .split("/")
    .map((level) => (level === "+" ? "pibake-check" : level === "#" ? `pibake-check/${tag}` : level))
    .join("/");
}

export interface RoundTripPlan {
  publisher: MqttUser;
  subscriber: MqttUser;
  topic: string;
}

const mayRead = (u: MqttUser, topic: string) => !u.topics || u.topics.some((r) => r.access !== "write" && filterMatches(r.topic, topic));
const mayWrite = (u: MqttUser, topic: string) => !u.topics || u.topics.some((r) => r.access !== "read" && filterMatches(r.topic, topic));

/**
 * Who sends and who receives the test message, on a topic the config grants
 * them: one user with readwrite (or no rules at all), else a writer and a reader
 * whose rules meet on one topic. Undefined when no two rules meet.
 */
export function planRoundTrip(users: MqttUser[], tag: string): RoundTripPlan | undefined {
  for (const u of users) {
    const rule = u.topics?.find((r) => r.access === "readwrite");
    if (rule) return { publisher: u, subscriber: u, topic: topicIn(rule.topic, tag) };
  }
  const free = users.find((u) => !u.topics);
  if (free) return { publisher: free, subscriber: free, topic: `pibake-check/${tag}` };
  for (const w of users) {
    for (const rule of w.topics ?? []) {
      if (rule.access === "read") continue;
      const topic = topicIn(rule.topic, tag);
      const reader = users.find((r) => mayRead(r, topic));
      if (reader && mayWrite(w, topic)) return { publisher: w, subscriber: reader, topic };
    }
  }
  return undefined;
}
