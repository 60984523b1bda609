// One TCP connection relayed: standard input and output (the guest's connection, as QEMU's
// guestfwd=…-cmd: hands it over, one run of this per connection) to HOST:PORT and back. Run
// with `ip netns exec NS` in front, it lets a QEMU guest reach a server in a network namespace
// (test/slow/boot-acme.test.ts). It prints nothing: its standard error is the connection too.
//   node tcp-relay.mjs HOST PORT
import net from "node:net";

const [host, port] = process.argv.slice(2);
const upstream = net.connect(Number(port), host);
const bye = () => process.stdout.write("", () => process.exit(0));
process.stdin.pipe(upstream);
// The guest's side closes when this process ends: process.stdout itself cannot be closed.
upstream.on("data", (chunk) => process.stdout.write(chunk));
upstream.on("close", bye);
upstream.on("error", () => process.exit(1));
process.stdin.on("error", () => process.exit(1));
process.stdout.on("error", () => process.exit(1));
