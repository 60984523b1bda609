import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";

/** One path of a file tree as the equivalence of two images sees it. */
export interface TreeEntry {
  type: "file" | "dir" | "link" | "other";
  mode: number;
  uid: number;
  gid: number;
  /** sha256 of a file's content; a link's target. */
  content?: string;
}

/** Every path below `root` (links not followed), with type, mode, owner and content. */
export function fileTree(root: string, opts: { owners?: boolean } = {}): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = lstatSync(p);
      const owners = opts.owners === false ? { uid: 0, gid: 0 } : { uid: st.uid, gid: st.gid };
      if (st.isDirectory()) {
        out.set(r, { type: "dir", mode: st.mode & 0o7777, ...owners });
        if (r !== "lost+found") walk(r);
      } else if (st.isSymbolicLink()) out.set(r, { type: "link", mode: 0, ...owners, content: readlinkSync(p) });
      else if (st.isFile())
        out.set(r, { type: "file", mode: st.mode & 0o7777, ...owners, content: createHash("sha256").update(readFileSync(p)).digest("hex") });
      else out.set(r, { type: "other", mode: st.mode & 0o7777, ...owners });
    }
  };
  walk("");
  return out;
}

/** Each path whose entry differs between two trees, with how: "etc/x: mode 644 → 600". */
export function treeDifferences(a: Map<string, TreeEntry>, b: Map<string, TreeEntry>): string[] {
  const diffs: string[] = [];
  for (const p of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const x = a.get(p);
    const y = b.get(p);
    if (!x || !y) {
      diffs.push(`${p}: only in the ${x ? "first" : "second"} (${(x ?? y)!.type})`);
      continue;
    }
    const how = (["type", "mode", "uid", "gid", "content"] as const)
      .filter((k) => x[k] !== y[k])
      .map((k) => `${k} ${k === "mode" ? x[k].toString(8) : String(x[k]).slice(0, 40)} → ${k === "mode" ? y[k].toString(8) : String(y[k]).slice(0, 40)}`);
    if (how.length) diffs.push(`${p}: ${how.join(", ")}`);
  }
  return diffs;
}
