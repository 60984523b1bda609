import { execa, type ResultPromise } from "execa";
import { closeSync, openSync, readFileSync, readSync, existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { freePort } from "./net.js";
import { tryConnect } from "./mqtt.js";

/**
 * An arm64 guest under qemu-system-aarch64 (TCG), booted from an image file
 * with snapshot=on so that the image is never modified. Forwarded ports bind
 * 127.0.0.1 only; the serial console goes to a file kept for failures.
 */
export interface VmOptions {
  image: string;
  kernelDir: string;
  /** Guest ports to forward, e.g. { mqtt: 1883, mqtts: 8883, ssh: 22 }. */
  forward: Record<string, number>;
  consoleLog: string;
  /** restrict=on keeps the guest off the network; lift it only where a check needs the guest to reach out. */
  restrictNetwork?: boolean;
}

export interface Vm {
  ports: Record<string, number>;
  startedAt: number;
  console(): string;
  lastConsoleLines(n?: number): string;
  waitForConsole(pattern: RegExp, ms: number): Promise<RegExpMatchArray>;
  powerdown(ms: number): Promise<number>;
  kill(): Promise<void>;
  exited(): boolean;
}

/** The MBR disk identifier (offset 440, little-endian), which PARTUUIDs are made of. */
export function diskIdentifier(image: string): string {
  const fd = openSync(image, "r");
  try {
    const b = Buffer.alloc(4);
    readSync(fd, b, 0, 4, 440);
    return b.readUInt32LE(0).toString(16).padStart(8, "0");
  } finally {
    closeSync(fd);
  }
}

export async function bootVm(o: VmOptions): Promise<Vm> {
  const ports: Record<string, number> = {};
  const forwards: string[] = [];
  for (const [name, guestPort] of Object.entries(o.forward)) {
    ports[name] = await freePort();
    forwards.push(`hostfwd=tcp:127.0.0.1:${ports[name]}-:${guestPort}`);
  }
  const monitor = path.join(path.dirname(o.consoleLog), `qemu-monitor-${process.pid}.sock`);
  const diskId = diskIdentifier(o.image);
  const args = [
    "-M", "virt", "-cpu", "cortex-a72", "-m", "1024", "-smp", "2",
    "-display", "none", "-serial", `file:${o.consoleLog}`, "-monitor", `unix:${monitor},server,nowait`,
    "-kernel", path.join(o.kernelDir, "vmlinuz"), "-initrd", path.join(o.kernelDir, "initrd.img"),
    // net.ifnames=0: the interface is eth0, as on a Raspberry Pi.
    "-append", `root=PARTUUID=${diskId}-02 rootfstype=ext4 rootwait console=ttyAMA0 net.ifnames=0`,
    "-drive", `file=${o.image},if=virtio,format=raw,snapshot=on`,
    "-netdev", `user,id=n0,restrict=${o.restrictNetwork === false ? "off" : "on"},${forwards.join(",")}`,
    "-device", "virtio-net-pci,netdev=n0",
    "-device", "virtio-rng-pci",
  ];
  const startedAt = Date.now();
  const child: ResultPromise = execa("qemu-system-aarch64", args, { reject: false, stdin: "ignore", all: true });
  let exited = false;
  let exitCode: number | undefined;
  void child.then((r) => {
    exited = true;
    exitCode = r.exitCode ?? undefined;
  });
  const readConsole = () => (existsSync(o.consoleLog) ? readFileSync(o.consoleLog, "latin1") : "");
  const vm: Vm = {
    ports,
    startedAt,
    console: readConsole,
    lastConsoleLines: (n = 40) => readConsole().split(/\r?\n/).slice(-n).join("\n"),
    exited: () => exited,
    async waitForConsole(pattern, ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = readConsole().match(pattern);
        if (m) return m;
        if (exited) throw new Error(`the VM exited (code ${exitCode}) before ${pattern}; last console lines:\n${vm.lastConsoleLines()}`);
        if (Date.now() > deadline) throw new Error(`no ${pattern} on the console within ${ms / 1000} s; last console lines:\n${vm.lastConsoleLines()}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    },
    /** ACPI-less `virt` powers off through the GPIO power key: system_powerdown on the monitor. */
    async powerdown(ms) {
      const t = Date.now();
      // The monitor keeps its side open: send the command, give it a moment, hang up.
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(monitor, () => {
          s.write("system_powerdown\n");
          setTimeout(() => {
            s.destroy();
            resolve();
          }, 1000);
        });
        s.on("error", reject);
      });
      const deadline = t + ms;
      while (!exited) {
        if (Date.now() > deadline) throw new Error(`the guest did not power off within ${ms / 1000} s; last console lines:\n${vm.lastConsoleLines()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      return Date.now() - t;
    },
    async kill() {
      if (!exited) child.kill("SIGKILL");
      await child.catch(() => undefined);
    },
  };
  return vm;
}

/** Run a command in the guest over SSH with the test's key (bounded). */
export async function sshRun(port: number, user: string, key: string, command: string, ms = 60_000) {
  return execa(
    "ssh",
    [
      "-i", key, "-p", String(port),
      "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
      "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
      `${user}@127.0.0.1`, command,
    ],
    { reject: false, timeout: ms, stdin: "ignore" },
  );
}

/**
 * Waits until the guest's broker takes a client with these options (bounded by
 * `ms`); throws with the console's last lines when the guest stops, fails to
 * boot, or the time is up.
 */
export async function waitForBroker(vm: Vm, url: string, opts: Parameters<typeof tryConnect>[1], ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let last = "";
  for (;;) {
    if (vm.exited()) throw new Error(`the VM stopped; last console lines:\n${vm.lastConsoleLines()}`);
    if (/Kernel panic|emergency mode|Give root password/i.test(vm.console())) throw new Error(`the guest failed to boot:\n${vm.lastConsoleLines()}`);
    const r = await tryConnect(url, opts, 10_000);
    if (r.ok) {
      r.client!.end(true);
      return;
    }
    last = r.error ?? "";
    if (Date.now() > deadline) throw new Error(`no broker at ${url} within ${Math.round(ms / 60_000)} minutes (last error: ${last}); last console lines:\n${vm.lastConsoleLines()}`);
    await new Promise((res) => setTimeout(res, 3000));
  }
}
