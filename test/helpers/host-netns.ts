/**
 * A network namespace made by a test, joined to this host by a veth pair: a
 * server started in it with `ip netns exec` may listen on every address (as on
 * the Pi) and is still reachable only from this host, at `nsAddress`.
 * Needs root and iproute2. Always remove() it (afterAll), also on failure.
 */
import { randomInt } from "node:crypto";
import { execa } from "execa";

export interface Netns {
  name: string;
  /** The namespace's end of the veth pair, which the host reaches. */
  nsAddress: string;
  /** Prefix for a command run inside the namespace. */
  exec: string[];
  remove(): Promise<void>;
}

const ip = (...args: string[]) => execa("ip", args, { timeout: 10_000 });

export async function createNetns(): Promise<Netns> {
  const id = `${process.pid % 10000}${randomInt(100, 999)}`;
  const name = `pibake-test-${id}`;
  // veth names have at most 15 characters.
  const hostIf = `pbh${id}`;
  const nsIf = `pbn${id}`;
  // A /30 in 10.213.0.0/16, chosen at random so that tests running at the same time do not meet.
  const block = randomInt(0, 16384) * 4;
  const net = `10.213.${Math.floor(block / 256)}.${block % 256}`;
  const hostAddress = net.replace(/\d+$/, (n) => String(Number(n) + 1));
  const nsAddress = net.replace(/\d+$/, (n) => String(Number(n) + 2));
  const remove = async () => {
    await ip("netns", "del", name).catch(() => undefined);
    // The host end goes with the namespace, but not always at once.
    await ip("link", "del", hostIf).catch(() => undefined);
  };
  try {
    await ip("netns", "add", name);
    await ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf);
    await ip("link", "set", nsIf, "netns", name);
    await ip("addr", "add", `${hostAddress}/30`, "dev", hostIf);
    await ip("link", "set", hostIf, "up");
    await ip("-n", name, "addr", "add", `${nsAddress}/30`, "dev", nsIf);
    await ip("-n", name, "link", "set", nsIf, "up");
    await ip("-n", name, "link", "set", "lo", "up");
  } catch (err) {
    await remove();
    throw new Error(`cannot make a network namespace (needs root and iproute2): ${(err as Error).message}`);
  }
  return { name, nsAddress, exec: ["ip", "netns", "exec", name], remove };
}
