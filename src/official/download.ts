/**
 * Downloading into `NAME.part`, resumable: a later run asks only for the
 * bytes after what is there (HTTP Range). The file keeps its `.part` name
 * until the caller has verified it, so nothing that looks complete is ever
 * left by a failure or Ctrl-C.
 */
import { createHash, type Hash } from "node:crypto";
import { createReadStream, promises as fsp } from "node:fs";
import { PibakeError } from "../errors.js";
import { abortReason, networkReason, type HttpClient, type HttpResponse } from "./http.js";
import { progressMeter, type ImageProgress } from "./progress.js";

export interface DownloadRequest {
  url: string;
  partFile: string;
  /** Name for progress and messages. */
  fileName: string;
  /** The size the list promises, if it does. */
  expectedSize?: number;
  client: HttpClient;
  signal?: AbortSignal | undefined;
  onProgress?: ((p: ImageProgress) => void) | undefined;
  onStatus?: ((message: string) => void) | undefined;
}

export interface Downloaded {
  /** SHA-256 of the whole file, measured as it was written (and over what an earlier run left). */
  sha256: string;
  size: number;
  /** Bytes that an interrupted download had left and that were not fetched again. */
  resumedFrom: number;
  /** Whether the server was asked for a range, and how it answered. */
  rangeAnswer?: 206 | 200 | 416;
}

async function sizeOrZero(file: string): Promise<number> {
  try {
    return (await fsp.stat(file)).size;
  } catch {
    return 0;
  }
}

async function hashFileInto(hash: Hash, file: string, signal: AbortSignal | undefined): Promise<void> {
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) })) hash.update(chunk as Buffer);
}

/** A Content-Range value: `bytes START-END/TOTAL`, or `bytes` then an asterisk then `/TOTAL` (a 416 answer). */
export function parseContentRange(value: string | null): { start?: number; total?: number } {
  const m = value ? /^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/i.exec(value.trim()) : null;
  if (!m) return {};
  return { ...(m[1] !== undefined ? { start: Number(m[1]) } : {}), ...(m[2] !== "*" ? { total: Number(m[2]) } : {}) };
}

/** How the body of an answer is to be taken: written from `start` (and how the server answered a range), or not at all. */
type Answer = { kind: "write"; start: number; rangeAnswer?: 206 | 200 } | { kind: "complete"; downloaded: Downloaded } | { kind: "again" };

export async function downloadToPart(req: DownloadRequest): Promise<Downloaded> {
  let existing = await partToContinue(req);
  // Two tries at most: the second without Range, when the first showed the partial file cannot be continued.
  for (let attempt = 0; attempt < 2; attempt++) {
    const hash = createHash("sha256");
    const res = await requestFrom(req, existing);
    const answer = await judgeAnswer(req, res, existing, hash);
    if (answer.kind === "again") {
      existing = 0;
      continue;
    }
    if (answer.kind === "complete") return answer.downloaded;
    return receiveBody(req, res, hash, answer.start, answer.rangeAnswer);
  }
  throw new PibakeError(`cannot download ${req.url}: the server's answers to a resumed download did not fit together`);
}

/** The bytes an earlier run left in the part file, or none when there are more than the image has. */
async function partToContinue(req: DownloadRequest): Promise<number> {
  const existing = await sizeOrZero(req.partFile);
  if (req.expectedSize !== undefined && existing > req.expectedSize) {
    req.onStatus?.(`${req.partFile} is larger than the image (${existing} > ${req.expectedSize} bytes): starting again`);
    await fsp.rm(req.partFile, { force: true });
    return 0;
  }
  return existing;
}

/** The request, for the bytes after `existing` when there are any. */
async function requestFrom(req: DownloadRequest, existing: number): Promise<HttpResponse> {
  const headers: Record<string, string> = existing > 0 ? { range: `bytes=${existing}-` } : {};
  try {
    return await req.client.get(req.url, { headers, signal: req.signal });
  } catch (err) {
    throw abortReason(req.signal, `downloading ${req.url}`) ?? new PibakeError(`cannot download ${req.url}: ${networkReason(err)}`);
  }
}

/** What the server's answer to a (ranged) request means for the part file; a resumed one hashes what is there first. */
async function judgeAnswer(req: DownloadRequest, res: HttpResponse, existing: number, hash: Hash): Promise<Answer> {
  const { partFile, signal } = req;
  if (existing > 0 && res.status === 416) {
    res.cancel();
    const { total } = parseContentRange(res.headers.get("content-range"));
    if (total === existing) {
      // The previous run had received everything and stopped before the check.
      await hashFileInto(hash, partFile, signal);
      return { kind: "complete", downloaded: { sha256: hash.digest("hex"), size: existing, resumedFrom: existing, rangeAnswer: 416 } };
    }
    req.onStatus?.(`the server cannot continue the partial download (HTTP 416): starting again`);
    await fsp.rm(partFile, { force: true });
    return { kind: "again" };
  } else if (existing > 0 && res.status === 206) {
    const { start: from } = parseContentRange(res.headers.get("content-range"));
    if (from !== existing) {
      res.cancel();
      req.onStatus?.(`the server sent a range starting at ${from ?? "an unknown offset"}, not ${existing}: starting again`);
      await fsp.rm(partFile, { force: true });
      return { kind: "again" };
    }
    await hashFileInto(hash, partFile, signal);
    return { kind: "write", start: existing, rangeAnswer: 206 };
  } else if (res.status === 200) {
    if (existing > 0) {
      req.onStatus?.(`the server does not resume downloads (it sent the whole file): starting again`);
      return { kind: "write", start: 0, rangeAnswer: 200 };
    }
    return { kind: "write", start: 0 };
  }
  res.cancel();
  throw new PibakeError(`cannot download ${req.url}: HTTP ${res.status} ${res.statusText}`.trim());
}

/** The body into the part file from `start`, hashed as it is written; a break keeps what came for the next run, unless the server sent too much. */
async function receiveBody(req: DownloadRequest, res: HttpResponse, hash: Hash, start: number, rangeAnswer: 206 | 200 | undefined): Promise<Downloaded> {
  const { url, partFile, signal } = req;
  const length = Number(res.headers.get("content-length"));
  const total = req.expectedSize ?? (Number.isSafeInteger(length) && length >= 0 ? start + length : undefined);
  const meter = progressMeter("download", req.fileName, total, req.onProgress, { resumedFrom: start });
  const fh = await fsp.open(partFile, start > 0 ? "r+" : "w", 0o644);
  let done = start;
  try {
    if (start === 0) await fh.truncate(0);
    meter.update(done, true);
    for await (const buf of res.body) {
      if (req.expectedSize !== undefined && done + buf.length > req.expectedSize) {
        throw new PibakeError(`the server sent more than the ${req.expectedSize} bytes the OS list gives for ${req.fileName}`);
      }
      await fh.write(buf, 0, buf.length, done);
      hash.update(buf);
      done += buf.length;
      meter.update(done);
    }
  } catch (err) {
    await fh.close();
    const stopped = abortReason(signal, `downloading ${req.fileName}`);
    if (stopped) {
      req.onStatus?.(`download stopped: ${done} bytes kept in ${partFile}; the next run continues from there`);
      throw stopped;
    }
    if (err instanceof PibakeError) {
      await fsp.rm(partFile, { force: true });
      throw err;
    }
    throw new PibakeError(`downloading ${url} broke off after ${done} bytes (${networkReason(err)}); run again to continue from ${partFile}`);
  }
  await fh.close();
  meter.update(done, true);
  return { sha256: hash.digest("hex"), size: done, resumedFrom: start, ...(rangeAnswer ? { rangeAnswer } : {}) };
}
