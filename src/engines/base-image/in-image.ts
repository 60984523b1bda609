import { createHash } from "node:crypto";
import type { Rendered } from "../../render/index.js";
import { OVERLAY_IN_STAGE } from "../../render/stage.js";

/**
 * What a build runs inside the image, as digests: each rendered stage file
 * (package lists, scripts) with the lines that only write files taken out:
 * the owners of the overlay's files (`chown`) and the first user's password
 * (`usermod --password`). Two renders with the same digests run the same
 * programs in the image (units enabled, packages installed, Node-RED's
 * install); only their files differ, which the fast path writes itself.
 * The overlay archive is left out: it is files.
 */
export type InImageWork = Record<string, string>;

/** Lines of a rendered stage script that only write files, which the fast path writes as files instead. */
const FILE_ONLY_LINE = /^(chown \S+ \S+|usermod --password \S+ \S+)$/;

export function inImageWork(rendered: Rendered): InImageWork {
  const out: InImageWork = {};
  for (const f of rendered.stage) {
    if (f.path === OVERLAY_IN_STAGE) continue;
    const lines = f.content
      .toString("utf8")
      .split("\n")
      .filter((l) => !FILE_ONLY_LINE.test(l.trim()));
    out[f.path] = createHash("sha256").update(lines.join("\n")).digest("hex");
  }
  return out;
}

/** The stage files whose in-image work differs between two records: added, removed or changed. */
export function inImageChanges(before: InImageWork, after: InImageWork): string[] {
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return names.filter((n) => before[n] !== after[n]);
}
