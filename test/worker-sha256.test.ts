import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { dataRuns } from "../src/image/bmap.js";
import { WorkerSha256 } from "../src/image/worker-sha256.js";

describe("WorkerSha256", () => {
  it("gives the sha256 of data handed over, copied and zeros sent as a count, in order", async () => {
    const chunk = 1 << 16;
    const parts = [randomBytes(chunk), Buffer.alloc(3 * chunk + 5), randomBytes(1234), randomBytes(chunk)];
    const hash = new WorkerSha256(chunk, 2);
    try {
      const taken = await hash.take();
      parts[0]!.copy(taken);
      hash.hand(taken);
      hash.zeros(parts[1]!.length);
      await hash.update(parts[2]!);
      const again = await hash.take();
      parts[3]!.copy(again);
      hash.hand(again.subarray(0, parts[3]!.length));
      expect(await hash.digest()).toBe(createHash("sha256").update(Buffer.concat(parts)).digest("hex"));
    } finally {
      await hash.close();
    }
  });

  it("waits for a buffer while all are with the thread, and refuses work once closed", async () => {
    const hash = new WorkerSha256(1024, 1);
    const first = await hash.take();
    let second: Buffer | undefined;
    const waiting = hash.take().then((b) => (second = b));
    await new Promise((r) => setTimeout(r, 20));
    expect(second).toBeUndefined();
    hash.hand(first);
    await waiting;
    expect(second!.length).toBe(1024);
    await hash.close();
    expect(() => hash.zeros(1)).toThrow(/closed/);
    await expect(hash.take()).rejects.toThrow(/closed/);
  });
});

describe("dataRuns", () => {
  it("finds the blocks that hold data, a short last block included", () => {
    const buf = Buffer.alloc(4096 * 5 + 100);
    buf[4096 + 7] = 1;
    buf[4096 * 2] = 2;
    buf[4096 * 5 + 99] = 3;
    expect(dataRuns(buf, buf.length, 4096)).toEqual([
      { start: 4096, end: 4096 * 3 },
      { start: 4096 * 5, end: 4096 * 5 + 100 },
    ]);
    expect(dataRuns(Buffer.alloc(8192), 8192, 4096)).toEqual([]);
  });
});
