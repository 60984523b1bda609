import { Worker } from "node:worker_threads";

/**
 * A sha256 computed on a thread of its own, so that hashing a whole image
 * (the slowest part of writing one: about 1.6 GB/s on one core) runs beside
 * the reads, the bmap's range hashes and the writes instead of after them.
 * A few buffers travel to the worker and back (transferred, not copied):
 * `take()` one, fill it, `hand()` it over; or `update()` copies bytes into
 * one. Runs of zeros are hashed there from memory, never sent. Always
 * `close()` it.
 */
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const hash = createHash("sha256");
const zeros = Buffer.alloc(1 << 20);
parentPort.on("message", (m) => {
  if (m.kind === "data") {
    hash.update(new Uint8Array(m.buffer, 0, m.length));
    parentPort.postMessage({ kind: "free", buffer: m.buffer }, [m.buffer]);
  } else if (m.kind === "zeros") {
    for (let left = m.length; left > 0; left -= zeros.length) hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
  } else if (m.kind === "digest") {
    parentPort.postMessage({ kind: "digest", hex: hash.digest("hex") });
  }
});
`;

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (err: Error) => void;
}

export class WorkerSha256 {
  private readonly worker: Worker;
  private readonly free: ArrayBuffer[];
  private readonly waitingForBuffer: Waiter<ArrayBuffer>[] = [];
  private waitingForDigest: Waiter<string> | undefined;
  private failure: Error | undefined;

  constructor(
    private readonly chunkSize: number,
    buffers = 4,
  ) {
    this.free = Array.from({ length: buffers }, () => new ArrayBuffer(chunkSize));
    this.worker = new Worker(WORKER_SOURCE, { eval: true });
    this.worker.on("message", (m: { kind: "free"; buffer: ArrayBuffer } | { kind: "digest"; hex: string }) => {
      if (m.kind === "free") {
        this.giveBack(Buffer.from(m.buffer));
      } else {
        this.waitingForDigest?.resolve(m.hex);
        this.waitingForDigest = undefined;
      }
    });
    this.worker.on("error", (err) => this.fail(err));
    this.worker.on("exit", (code) => this.fail(new Error(`the hashing thread stopped (exit ${code})`)));
  }

  /** A free buffer of the chunk size; waits only while every buffer is with the worker. */
  async take(): Promise<Buffer> {
    return Buffer.from(await this.takeBuffer());
  }

  /** Hash `bytes`, a view from the start of a buffer that `take()` gave: it goes to the worker (unusable here until taken again). */
  hand(bytes: Buffer): void {
    this.check();
    if (bytes.byteOffset !== 0 || bytes.buffer.byteLength !== this.chunkSize) throw new RangeError("hand() takes a buffer that take() gave");
    const buffer = bytes.buffer as ArrayBuffer;
    this.worker.postMessage({ kind: "data", buffer, length: bytes.length }, [buffer]);
  }

  /** Return a buffer from `take()` unhashed. */
  giveBack(bytes: Buffer): void {
    const buffer = bytes.buffer as ArrayBuffer;
    const next = this.waitingForBuffer.shift();
    if (next) next.resolve(buffer);
    else this.free.push(buffer);
  }

  /** Hash a copy of `bytes` (at most the chunk size). */
  async update(bytes: Uint8Array): Promise<void> {
    if (bytes.length > this.chunkSize) throw new RangeError(`a chunk of ${bytes.length} bytes is over ${this.chunkSize}`);
    const buffer = await this.take();
    buffer.set(bytes);
    this.hand(buffer.subarray(0, bytes.length));
  }

  /** Hash `length` zero bytes (a hole), without sending them. */
  zeros(length: number): void {
    this.check();
    if (length > 0) this.worker.postMessage({ kind: "zeros", length });
  }

  async digest(): Promise<string> {
    this.check();
    return new Promise<string>((resolve, reject) => {
      this.waitingForDigest = { resolve, reject };
      this.worker.postMessage({ kind: "digest" });
    });
  }

  async close(): Promise<void> {
    this.failure ??= new Error("the hashing thread was closed");
    await this.worker.terminate();
  }

  private takeBuffer(): Promise<ArrayBuffer> {
    this.check();
    const buffer = this.free.pop();
    if (buffer) return Promise.resolve(buffer);
    return new Promise((resolve, reject) => this.waitingForBuffer.push({ resolve, reject }));
  }

  private check(): void {
    if (this.failure) throw this.failure;
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const w of this.waitingForBuffer.splice(0)) w.reject(err);
    this.waitingForDigest?.reject(err);
    this.waitingForDigest = undefined;
  }
}
