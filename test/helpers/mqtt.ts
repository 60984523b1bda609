import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { ConnectionOptions } from "node:tls";

export interface ConnectResult {
  ok: boolean;
  client?: MqttClient;
  error?: string;
}

/** Connect once (no reconnects), resolve with the outcome within `ms`. */
/** mqtt.js hands TLS options (minVersion, ciphers…) through to node:tls. */
export function tryConnect(url: string, opts: IClientOptions & Pick<ConnectionOptions, "minVersion" | "maxVersion" | "ciphers">, ms = 15_000): Promise<ConnectResult> {
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

/** Subscribe, publish, and wait (bounded) for the message to come back. */
export async function roundTrip(client: MqttClient, topic: string, payload: string, ms = 10_000): Promise<string> {
  await client.subscribeAsync(topic, { qos: 1 });
  const got = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message on ${topic} within ${ms} ms`)), ms);
    client.on("message", (t, p) => {
      if (t === topic) {
        clearTimeout(timer);
        resolve(p.toString());
      }
    });
  });
  await client.publishAsync(topic, payload, { qos: 1 });
  return got;
}
