import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { ConnectionOptions } from "node:tls";

export interface ConnectResult {
  ok: boolean;
  client?: MqttClient;
  error?: string;
}

/** Connect once (no reconnects), resolve with the outcome within `ms`. */
/** mqtt.js hands TLS options (minVersion, ciphers…) through to node:tls. */
export function tryConnect(
  url: string,
  opts: IClientOptions & Pick<ConnectionOptions, "minVersion" | "maxVersion" | "ciphers">,
  ms = 15_000,
): Promise<ConnectResult> {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: ms, ...opts });
    const timer = setTimeout(() => {
      client.end(true);
      resolve({ ok: false, error: "timeout" });
    }, ms);
    client.once("connect", () => {
      clearTimeout(timer);
      resolve({ ok: true, client });
    });
    client.once("error", (err) => {
      clearTimeout(timer);
      client.end(true);
      resolve({ ok: false, error: (err as Error & { code?: string | number }).code ? `${(err as any).code}: ${err.message}` : err.message });
    });
  });
}

/**
 * Subscribe, publish, and wait for the message to come back: all three
 * together bounded by `ms` (a broker that never acknowledges the SUBSCRIBE or
 * PUBLISH fails here too, naming the step it hung in).
 */
export async function roundTrip(client: MqttClient, topic: string, payload: string, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  const within = <T>(step: string, p: Promise<T>) =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`roundTrip on ${topic}: ${step} not done within ${ms} ms`)), Math.max(0, deadline - Date.now()));
      p.then(
        (v) => (clearTimeout(timer), resolve(v)),
        (e) => (clearTimeout(timer), reject(e)),
      );
    });
  let onMessage: ((t: string, p: Buffer) => void) | undefined;
  const got = new Promise<string>((resolve) => {
    onMessage = (t, p) => {
      if (t === topic) resolve(p.toString());
    };
    client.on("message", onMessage);
  });
  try {
    await within("subscribe", client.subscribeAsync(topic, { qos: 1 }));
    await within("publish", client.publishAsync(topic, payload, { qos: 1 }));
    return await within("the message", got);
  } finally {
    client.removeListener("message", onMessage!);
  }
}
