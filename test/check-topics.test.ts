/** Which users and topic pibake check uses for its round trip, from the config's ACL rules (pure; the broker test proves them on mosquitto). */
import { describe, expect, it } from "vitest";
import type { MqttUser, TopicRule } from "../src/config/model.js";
import { Secret } from "../src/config/model.js";
import { filterMatches, planRoundTrip, topicIn } from "../src/check/topics.js";

const user = (name: string, topics?: TopicRule[]): MqttUser =>
  topics ? { name, password: new Secret("x-password-1", "literal"), topics } : { name, password: new Secret("x-password-1", "literal") };

describe("round-trip plan", () => {
  it("matches topic filters as MQTT does", () => {
    const table: [string, string, boolean][] = [
      ["home/#", "home/a/b", true],
      ["home/#", "home", true],
      ["home/+", "home/a", true],
      ["home/+", "home/a/b", false],
      ["home/a", "home/a", true],
      ["home/a", "home/b", false],
      ["+/a", "x/a", true],
      ["#", "anything/at/all", true],
    ];
    for (const [f, t, want] of table) expect([f, t, filterMatches(f, t)]).toEqual([f, t, want]);
    expect(topicIn("home/+/state/#", "t1")).toBe("home/pibake-check/state/pibake-check/t1");
  });

  it("prefers one readwrite user, then a user without rules, then a writer and a reader who meet", () => {
    const rw = planRoundTrip([user("s", [{ access: "write", topic: "a/#" }]), user("p", [{ access: "readwrite", topic: "cmd/+" }])], "t");
    expect(rw).toMatchObject({ publisher: { name: "p" }, subscriber: { name: "p" }, topic: "cmd/pibake-check" });
    const free = planRoundTrip([user("s", [{ access: "write", topic: "a/#" }]), user("hub")], "t");
    expect(free).toMatchObject({ publisher: { name: "hub" }, topic: "pibake-check/t" });
    const pair = planRoundTrip([user("s", [{ access: "write", topic: "home/sensors/#" }]), user("p", [{ access: "read", topic: "home/#" }])], "t");
    expect(pair).toMatchObject({ publisher: { name: "s" }, subscriber: { name: "p" }, topic: "home/sensors/pibake-check/t" });
    expect(planRoundTrip([user("s", [{ access: "write", topic: "a/#" }]), user("p", [{ access: "read", topic: "b/#" }])], "t")).toBeUndefined();
  });
});
