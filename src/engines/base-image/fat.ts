import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { PibakeError } from "../../errors.js";
import type { BuildLog } from "../../host/log.js";
import { runCommand, type Command } from "../../host/process.js";
import { copyFatIn, copyFatOut, makeFatDir, removeFatFiles, removeFatTree } from "./commands.js";

/**
 * The FAT boot partition, read and written with mtools at its byte offset in
 * the image file: no vfat driver, no loop device, no mount.
 */
export interface TreeEntry {
  type: "file" | "dir";
  sha256?: string;
}
export type TreeSnapshot = Map<string, TreeEntry>;

export class FatPartition {
  constructor(
    readonly image: string,
    readonly offset: number,
    private readonly log?: BuildLog,
  ) {}

  private get drive(): string {
    return `${this.image}@@${this.offset}`;
  }

  private run(c: Command) {
    return runCommand(c, this.log ? { log: this.log } : {});
  }

  /** Copy every file of the partition into `dir` (which must exist); returns what was there. */
  async extract(dir: string): Promise<TreeSnapshot> {
    await this.run(copyFatOut(this.drive, dir));
    return snapshotTree(dir);
  }

  /** Apply to the partition what changed in `dir` since `before`: new directories, new and changed files, removals. */
  async writeBack(dir: string, before: TreeSnapshot): Promise<{ changed: string[]; removed: string[] }> {
    const after = snapshotTree(dir);
    const plan = diffTrees(before, after);
    for (const d of plan.removedDirs) await this.run(removeFatTree(this.drive, d));
    if (plan.removedFiles.length > 0) {
      await this.run(removeFatFiles(this.drive, plan.removedFiles));
    }
    for (const d of plan.newDirs) await this.run(makeFatDir(this.drive, d));
    const byDir = new Map<string, string[]>();
    for (const f of plan.writeFiles) {
      const parent = path.posix.dirname(f);
      byDir.set(parent, [...(byDir.get(parent) ?? []), f]);
    }
    for (const [parent, files] of byDir) {
      const target = parent === "." ? "::/" : `::/${parent}/`;
      await this.run(copyFatIn(this.drive, dir, files, target));
    }
    return { changed: plan.writeFiles, removed: [...plan.removedDirs, ...plan.removedFiles] };
  }
}

/** Files and directories below `dir`, relative, with content digests. FAT holds nothing else. */
export function snapshotTree(dir: string): TreeSnapshot {
  const out: TreeSnapshot = new Map();
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(path.join(dir, r));
      if (st.isDirectory()) {
        out.set(r, { type: "dir" });
        walk(r);
      } else if (st.isFile()) {
        out.set(r, {
          type: "file",
          sha256: createHash("sha256")
            .update(readFileSync(path.join(dir, r)))
            .digest("hex"),
        });
      } else {
        throw new PibakeError(
          `/boot/firmware/${r} is a ${st.isSymbolicLink() ? "symbolic link" : "special file"}: the boot partition is FAT and holds only files and directories; the stage must not create it`,
        );
      }
    }
  };
  walk("");
  return out;
}

export interface TreeDiff {
  newDirs: string[];
  writeFiles: string[];
  removedFiles: string[];
  removedDirs: string[];
}

/** What to do to turn `before` into `after`; removed directories are removed whole (their files are not listed again). */
export function diffTrees(before: TreeSnapshot, after: TreeSnapshot): TreeDiff {
  const removedDirs = [...before]
    .filter(([p, e]) => e.type === "dir" && after.get(p)?.type !== "dir")
    .map(([p]) => p)
    .sort();
  const topRemoved = removedDirs.filter((d) => !removedDirs.some((o) => o !== d && d.startsWith(`${o}/`)));
  const underRemoved = (p: string) => topRemoved.some((d) => p.startsWith(`${d}/`));
  const removedFiles = [...before]
    .filter(([p, e]) => e.type === "file" && after.get(p)?.type !== "file" && !underRemoved(p))
    .map(([p]) => p)
    .sort();
  const newDirs = [...after]
    .filter(([p, e]) => e.type === "dir" && before.get(p)?.type !== "dir")
    .map(([p]) => p)
    .sort((a, b) => a.split("/").length - b.split("/").length || (a < b ? -1 : 1));
  const writeFiles = [...after]
    .filter(([p, e]) => e.type === "file" && (underRemoved(p) || before.get(p)?.type !== "file" || before.get(p)?.sha256 !== e.sha256))
    .map(([p]) => p)
    .sort();
  // A directory replaced by a file (or the reverse) is removed first, then written.
  return { newDirs, writeFiles, removedFiles, removedDirs: topRemoved };
}
