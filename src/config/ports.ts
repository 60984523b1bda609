import type { ParsedConfig } from "./schema.js";

/** A port the broker listens on, with the config field that sets it. */
export interface ListenerPort {
  path: string;
  port: number;
}

/** Every port Mosquitto listens on, in the order the config lists them; each needs a port of its own. */
export function mqttListenerPorts(c: ParsedConfig): ListenerPort[] {
  const ws = c.mqtt.websockets;
  return [
    { path: "mqtt.lanPort", port: c.mqtt.lanPort },
    { path: "mqtt.tlsPort", port: c.mqtt.tlsPort },
    ...(ws ? [{ path: "mqtt.websockets.tlsPort", port: ws.tlsPort }] : []),
    ...(ws?.lan ? [{ path: "mqtt.websockets.lanPort", port: ws.lanPort }] : []),
  ];
}
