import type tar from "tar-stream";
import { pack as tarPack } from "./tar-stream.js";
import type { OverlayFile } from "./overlay.js";

/** A fixed time for every entry, so that the same inputs give the same bytes. */
export const OVERLAY_MTIME = new Date("2024-01-01T00:00:00Z");

/**
 * overlay.tar: entries sorted, parent directories listed before their files
 * (root 0755; the stage extracts with --no-overwrite-dir, so existing ones keep theirs),
 * owners and groups by name, fixed mtimes. Byte-identical for identical inputs.
 */
export function packOverlay(files: OverlayFile[]): Promise<Buffer> {
  return packTar((pack) => addOverlay(pack, files));
}

/** A tar in memory: `add` writes its entries, the archive's bytes come back once it is finished. */
export async function packTar(add: (pack: tar.Pack) => void): Promise<Buffer> {
  const pack = tarPack();
  const chunks: Buffer[] = [];
  pack.on("data", (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on("end", () => resolve());
    pack.on("error", reject);
  });
  add(pack);
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function addOverlay(pack: tar.Pack, files: OverlayFile[]): void {
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/") + "/");
  }
  const entries: ({ kind: "dir"; path: string } | { kind: "file"; file: OverlayFile })[] = [
    ...[...dirs].map((d) => ({ kind: "dir" as const, path: d })),
    ...files.map((file) => ({ kind: "file" as const, file })),
  ].sort((a, b) => {
    const pa = a.kind === "dir" ? a.path : a.file.path;
    const pb = b.kind === "dir" ? b.path : b.file.path;
    return pa < pb ? -1 : pa > pb ? 1 : 0;
  });
  for (const e of entries) {
    if (e.kind === "dir") {
      pack.entry({ name: e.path, type: "directory", mode: 0o755, uname: "root", gname: "root", uid: 0, gid: 0, mtime: OVERLAY_MTIME });
    } else {
      const f = e.file;
      // Numeric ids are 0: the stage extracts with --no-same-owner and sets owners by name inside the image.
      pack.entry({ name: f.path, type: "file", mode: f.mode, uname: f.owner, gname: f.group, uid: 0, gid: 0, mtime: OVERLAY_MTIME }, f.content);
    }
  }
}
