import { randomBytes } from "node:crypto";
import type { IClientOptions, MqttClient } from "mqtt";
import type { MqttUser } from "../config/model.js";
import { failed, ok, type Budget, type CheckResult } from "./result.js";
import { classify, describe, reachFix, within } from "./net.js";
import { planRoundTrip } from "./topics.js";

export interface MqttTarget {
  /** Line names start with it: "mqtts", "wss", "lan". */
  label: string;
  host: string;
  address: string;
  port: number;
  /** Transport settings: protocol, and for TLS the CA and the name to verify. */
  transport: IClientOptions;
  users: MqttUser[];
  buildCommand: string;
  lan: boolean;
}

type Attempt = { client: MqttClient; error?: undefined } | { client?: undefined; error: Error & { code?: string | number } };

/** CONNACK 4 (bad user name or password) and 5 (not authorised): the broker said no. */
const refusedByBroker = (e: { code?: string | number }) => e.code === 4 || e.code === 5 || e.code === 134 || e.code === 135;

/** One connection attempt, no reconnects, bounded; a client that failed is ended. */
async function attempt(mqtt: typeof import("mqtt"), target: MqttTarget, ms: number, login?: { username: string; password: string }): Promise<Attempt> {
  let client: MqttClient | undefined;
  const work = new Promise<Attempt>((resolve) => {
    client = mqtt.connect({
      host: target.address,
      port: target.port,
      reconnectPeriod: 0,
      connectTimeout: ms,
      clean: true,
      clientId: `pibake-check-${randomBytes(4).toString("hex")}`,
      ...target.transport,
      ...login,
    });
    client.once("connect", () => resolve({ client: client! }));
    client.once("error", (error) => resolve({ error }));
    client.once("close", () => resolve({ error: Object.assign(new Error("the connection closed before the broker answered"), { code: "ECONNRESET" }) }));
  });
  try {
    const r = await within(`MQTT connection to ${target.host}:${target.port}`, ms, work);
    if (r.error) client?.end(true);
    return r;
  } catch (error) {
    client?.end(true);
    return { error: error as Error };
  }
}

const end = (c: MqttClient | undefined) => c?.end(true);

/**
 * Anonymous clients refused, a wrong password refused, and a message that
 * one configured user publishes reaching a subscriber the ACL allows.
 */
export async function checkMqtt(target: MqttTarget, budget: Budget): Promise<CheckResult[]> {
  const mqtt = (await import("mqtt")).default as unknown as typeof import("mqtt");
  const where = `${target.host}:${target.port}`;
  const n = (what: string) => `${target.label} ${what}`;
  const results: CheckResult[] = [];
  const unreachable = (err: unknown) =>
    failed(n("connect"), `${where}: ${describe(err)}; the other ${target.label} checks were not tried`, reachFix(err, target.host, target.port, target.lan));
  const isNetwork = (err: unknown) => classify(err) !== undefined && !refusedByBroker(err as { code?: number });

  const anonymous = await attempt(mqtt, target, budget.ms);
  if (anonymous.client) {
    end(anonymous.client);
    results.push(
      failed(
        n("anonymous"),
        `${where} lets clients in without a user name and password`,
        `build a new image (${target.buildCommand}): pibake's mosquitto settings have allow_anonymous false`,
      ),
    );
  } else if (refusedByBroker(anonymous.error)) results.push(ok(n("anonymous"), `a client without a password is refused (${anonymous.error.message})`));
  else if (isNetwork(anonymous.error)) return [unreachable(anonymous.error)];
  else results.push(failed(n("anonymous"), `no answer a client can act on: ${describe(anonymous.error)}`));

  const plan = planRoundTrip(target.users, randomBytes(4).toString("hex"));
  const someone = plan?.publisher ?? target.users[0];
  if (!someone) {
    results.push(failed(n("login"), "the config has no MQTT user to log in with"));
    return results;
  }

  const wrong = await attempt(mqtt, target, budget.ms, {
    username: someone.name,
    password: `${someone.password.reveal()}-not-${randomBytes(3).toString("hex")}`,
  });
  if (wrong.client) {
    end(wrong.client);
    results.push(
      failed(
        n("wrong password"),
        `${someone.name} got in with a wrong password`,
        `build a new image (${target.buildCommand}): its password file holds only the config's passwords`,
      ),
    );
  } else if (refusedByBroker(wrong.error)) results.push(ok(n("wrong password"), `${someone.name} with a wrong password is refused`));
  else if (isNetwork(wrong.error)) return [...results, unreachable(wrong.error)];
  else results.push(failed(n("wrong password"), `no answer a client can act on: ${describe(wrong.error)}`));

  if (!plan) {
    results.push(
      failed(
        n("round trip"),
        "no two users of the config may write and read one same topic (mqtt.users[].topics), so no message could be sent and received",
        "give one user a readwrite rule, or a writer and a reader a common topic",
      ),
    );
    return results;
  }
  results.push(await roundTrip(mqtt, target, plan, budget));
  return results;
}

async function roundTrip(
  mqtt: typeof import("mqtt"),
  target: MqttTarget,
  plan: NonNullable<ReturnType<typeof planRoundTrip>>,
  budget: Budget,
): Promise<CheckResult> {
  const name = `${target.label} round trip`;
  const login = (u: MqttUser) => ({ username: u.name, password: u.password.reveal() });
  const wrongPassword = (u: MqttUser) =>
    failed(
      name,
      `${u.name} could not log in with the config's password (not authorized)`,
      `the image has other passwords than the config: build a new image (${target.buildCommand}) and flash it`,
    );
  const who = plan.publisher === plan.subscriber ? plan.publisher.name : `${plan.publisher.name} → ${plan.subscriber.name}`;
  let sub: MqttClient | undefined;
  let pub: MqttClient | undefined;
  try {
    const s = await attempt(mqtt, target, budget.ms, login(plan.subscriber));
    if (s.error)
      return refusedByBroker(s.error) ? wrongPassword(plan.subscriber) : failed(name, `${plan.subscriber.name} could not connect: ${describe(s.error)}`);
    sub = s.client;
    const payload = `pibake check ${randomBytes(8).toString("hex")}`;
    const received = new Promise<void>((resolve) =>
      sub!.on("message", (topic, body) => topic === plan.topic && body.toString("utf8") === payload && resolve()),
    );
    const granted = await within(`subscribing to ${plan.topic}`, budget.ms, sub.subscribeAsync(plan.topic, { qos: 1 }));
    if (granted[0]?.qos === 128)
      return failed(
        name,
        `${plan.subscriber.name} may not subscribe to ${plan.topic} (SUBACK 128)`,
        `build a new image (${target.buildCommand}): its ACL should follow mqtt.users[].topics`,
      );
    if (plan.publisher === plan.subscriber) pub = sub;
    else {
      const p = await attempt(mqtt, target, budget.ms, login(plan.publisher));
      if (p.error)
        return refusedByBroker(p.error) ? wrongPassword(plan.publisher) : failed(name, `${plan.publisher.name} could not connect: ${describe(p.error)}`);
      pub = p.client;
    }
    await within(`publishing to ${plan.topic}`, budget.ms, pub.publishAsync(plan.topic, payload, { qos: 1 }));
    try {
      await within(`the message on ${plan.topic}`, budget.ms, received);
    } catch {
      return failed(
        name,
        `${plan.publisher.name} published to ${plan.topic} but ${plan.subscriber.name} did not receive it within ${(budget.perCheckMs / 1000).toFixed(0)} s`,
        `build a new image (${target.buildCommand}): its ACL should follow mqtt.users[].topics`,
      );
    }
    return ok(name, `${who}: a message on ${plan.topic} arrived (QoS 1)`);
  } catch (err) {
    return failed(name, `${who} on ${plan.topic}: ${describe(err)}`);
  } finally {
    end(sub);
    if (pub !== sub) end(pub);
  }
}
