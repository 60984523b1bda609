import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { TestProject } from "vitest/node";

/** One directory for the whole run, through which a test file hands a build to another (test/helpers/broker-image.ts). */
export default function setup(project: TestProject): () => void {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pibake-hand-over-"));
  project.provide("handOverDir", dir);
  return () => rmSync(dir, { recursive: true, force: true });
}
