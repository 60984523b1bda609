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
  /** The kernel command line; default: root by PARTUUID, the serial console, kernel interface names. See cmdlineForQemu. */
  append?: string;
  /** Write to the image (default: snapshot=on, the image is never modified): for a boot whose changes the next boot must see. */
  writable?: boolean;
  /** A reboot ends QEMU (-no-reboot), as a first boot that reboots itself needs: the next boot reads the changed cmdline.txt. */
  noReboot?: boolean;
  /**
   * Guest TCP connections to address:port handed to a program on the host, one run of it per
   * connection, the connection on its standard input and output (QEMU's guestfwd=…-cmd:). They
   * pass restrict=on: the guest reaches these and nothing else. See test/helpers/tcp-relay.mjs.
   */
  guestForward?: { address: string; port: number; command: string[] }[];
}

/**
 * A Raspberry Pi's cmdline.txt made fit for QEMU's `virt` machine: the Pi's
 * serial alias becomes the PL011 console, which is kept as the last console
 * (the one systemd writes to); everything else (root=, resize, init=, quiet)
 * stays as the image has it, so that its first-boot logic runs as on a Pi.
 * `net.ifnames=0` stands in for the image's masked 99-default.link, which a
 * Pi's initramfs carries but the QEMU kernel's initramfs (made from a plain
 * Debian system) does not: its udev would rename eth0 before the root is up.
 */
export function cmdlineForQemu(cmdlineTxt: string): string {
  const args = cmdlineTxt
    .trim()
    .split(/\s+/)
    .filter((a) => !a.startsWith("console="));
  return [...args, "net.ifnames=0", "console=ttyAMA0"].join(" ");
}

export interface Vm {
  ports: Record<string, number>;
  /** Resolves with QEMU's exit code when it exits. */
  exit: Promise<number | undefined>;
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

/** One guestfwd option: QEMU splits -netdev at commas (doubled, one is literal) and the command like a shell (no shell runs it). */
export function guestfwd(f: { address: string; port: number; command: string[] }): string {
  const quoted = f.command.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`));
  return `guestfwd=tcp:${f.address}:${f.port}-cmd:${quoted.join(" ").replaceAll(",", ",,")}`;
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
    "-M",
    "virt",
    "-cpu",
    "cortex-a72",
    "-m",
    "1024",
    "-smp",
    "2",
    "-display",
    "none",
    "-serial",
    `file:${o.consoleLog}`,
    "-monitor",
    `unix:${monitor},server,nowait`,
    "-kernel",
    path.join(o.kernelDir, "vmlinuz"),
    "-initrd",
    path.join(o.kernelDir, "initrd.img"),
    // net.ifnames=0: the interface is eth0, as on a Raspberry Pi.
    "-append",
    o.append ?? `root=PARTUUID=${diskId}-02 rootfstype=ext4 rootwait console=ttyAMA0 net.ifnames=0`,
    "-drive",
    `file=${o.image},if=virtio,format=raw${o.writable ? "" : ",snapshot=on"}`,
    ...(o.noReboot ? ["-no-reboot"] : []),
    "-netdev",
    ["user", "id=n0", `restrict=${o.restrictNetwork === false ? "off" : "on"}`, ...forwards, ...(o.guestForward ?? []).map(guestfwd)].join(","),
    "-device",
    "virtio-net-pci,netdev=n0",
    "-device",
    "virtio-rng-pci",
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
    exit: child.then(
      (r) => r.exitCode ?? undefined,
      () => undefined,
    ),
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
        const timer = setTimeout(
          () => {
            s.destroy();
            reject(new Error(`the QEMU monitor did not take system_powerdown within 10 s`));
          },
          Math.min(10_000, ms),
        );
        const s = net.connect(monitor, () => {
          clearTimeout(timer);
          s.write("system_powerdown\n");
          setTimeout(() => {
            s.destroy();
            resolve();
          }, 1000);
        });
        s.on("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
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

/**
 * One step's time budget, shared by all its waits: `cap(ms)` hands a single
 * wait at most `ms` and never more than what is left, so the waits of a step
 * cannot add up past its end. Made at the start of an `it` or hook whose
 * runner timeout is the budget plus a margin (see test/boot.test.ts).
 */
export class Deadline {
  readonly start = Date.now();
  readonly at: number;
  constructor(
    readonly name: string,
    readonly ms: number,
  ) {
    this.at = this.start + ms;
  }
  remaining(): number {
    return Math.max(0, this.at - Date.now());
  }
  /** At most `ms`, never past the deadline; throws (naming the budget) once it is spent. */
  cap(ms: number): number {
    const left = this.at - Date.now();
    if (left <= 0) throw new Error(`the ${this.name} budget (${this.ms / 1000} s) is spent`);
    return Math.max(1, Math.min(ms, left));
  }
  /** A deadline for the first part of this step, ending `reserveMs` before it (kept for the later parts). */
  before(name: string, reserveMs: number): Deadline {
    return new Deadline(name, Math.max(0, this.at - reserveMs - Date.now()));
  }
}

export interface SshTarget {
  port: number;
  user: string;
  key: string;
}

/** Run a command in the guest over SSH with the test's key (bounded by `ms`). */
export async function sshRun(port: number, user: string, key: string, command: string, ms = 60_000) {
  return execa(
    "ssh",
    [
      "-i",
      key,
      "-p",
      String(port),
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "BatchMode=yes",
      "-o",
      `ConnectTimeout=${Math.max(1, Math.min(20, Math.floor(ms / 1000) - 2))}`,
      "-o",
      "LogLevel=ERROR",
      `${user}@127.0.0.1`,
      command,
    ],
    // execa's timeout 0 would mean none: never hand it less than 1 ms.
    { reject: false, timeout: Math.max(1, ms), stdin: "ignore" },
  );
}

/** How long to give the SSH look at the guest in bootDiagnostics: the margins in test/boot.test.ts leave room for it. */
export const DIAGNOSTICS_SSH_MS = 25_000;

/**
 * What a failed boot step reports besides its own message: the time since
 * power-on, and (one bounded SSH attempt) the guest's failed units and the
 * jobs still queued; if SSH fails, that it did and how.
 */
export async function bootDiagnostics(vm: Vm, ssh?: SshTarget, ms = DIAGNOSTICS_SSH_MS): Promise<string> {
  const lines = [`time since power-on at the failure: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`];
  if (!ssh) lines.push("failed units / unfinished jobs: not asked (no SSH forwarded)");
  else if (vm.exited()) lines.push("failed units / unfinished jobs: not asked (the VM has exited)");
  else {
    const r = await sshRun(
      ssh.port,
      ssh.user,
      ssh.key,
      "echo '--- failed units:'; systemctl --failed --no-legend --plain 2>&1 | grep . || echo '(none)'; echo '--- unfinished jobs:'; systemctl list-jobs --no-legend 2>&1 | grep . || echo '(none)'",
      ms,
    );
    if (r.timedOut)
      lines.push(`failed units / unfinished jobs: SSH to the guest timed out after ${ms / 1000} s${r.stderr.trim() ? ` (${r.stderr.trim()})` : ""}`);
    else if (!r.stdout.includes("--- failed units:"))
      lines.push(`failed units / unfinished jobs: SSH to the guest failed (exit ${r.exitCode}): ${r.stderr.trim() || "no message"}`);
    else lines.push(r.stdout.trim());
  }
  return lines.join("\n");
}

/**
 * Waits until the guest's broker takes a client with these options, within
 * `within` (ms from now, or a Deadline: every try and pause stays inside it);
 * throws when the guest stops, fails to boot, or the time is up, with the
 * console's last lines and bootDiagnostics (the failed units and queued jobs
 * when `ssh` is given and the guest answers it).
 */
export async function waitForBroker(
  vm: Vm,
  url: string,
  opts: Parameters<typeof tryConnect>[1],
  within: number | Deadline,
  o: { ssh?: SshTarget } = {},
): Promise<void> {
  const d = typeof within === "number" ? new Deadline("broker wait", within) : within;
  const fail = async (what: string) => {
    throw new Error(`${what}; last console lines:\n${vm.lastConsoleLines()}\n--- diagnostics:\n${await bootDiagnostics(vm, o.ssh)}`);
  };
  let last = "";
  for (;;) {
    if (vm.exited()) return fail("the VM stopped");
    if (/Kernel panic|emergency mode|Give root password/i.test(vm.console())) return fail("the guest failed to boot");
    if (d.remaining() > 0) {
      const r = await tryConnect(url, opts, d.cap(10_000));
      if (r.ok) {
        r.client!.end(true);
        return;
      }
      last = r.error ?? "";
    }
    if (d.remaining() <= 0) return fail(`no broker at ${url} within ${(d.ms / 1000).toFixed(0)} s (last error: ${last || "none"})`);
    await new Promise((res) => setTimeout(res, Math.min(3000, d.remaining())));
  }
}

/**
 * Runs a boot step; if it fails, its error gets the console's last lines and
 * bootDiagnostics added (unless waitForBroker already added them), so that a
 * refused login or a lost message says as much about the guest as a timeout.
 */
export async function withBootDiagnostics<T>(vm: Vm, ssh: SshTarget | undefined, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    if (!err.message.includes("--- diagnostics:")) {
      err.message += `\nlast console lines:\n${vm.lastConsoleLines()}\n--- diagnostics:\n${await bootDiagnostics(vm, ssh)}`;
    }
    throw err;
  }
}
