/**
 * The README is the way in and docs/ holds the reference: the README stays short, its
 * config sample (if it has one) is examples/broker.json itself, and every relative link
 * in README.md and docs/*.md leads somewhere: to a file that exists and, for a
 * `#anchor` into a markdown file, to a heading with that GitHub-style slug.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const read = (rel: string): string => readFileSync(path.join(root, rel), "utf8");

/** README.md and every markdown file in docs/, relative to the repository. */
const markdownFiles = (): string[] => [
  "README.md",
  ...readdirSync(path.join(root, "docs"))
    .filter((n) => n.endsWith(".md"))
    .sort()
    .map((n) => `docs/${n}`),
];

/** The text outside fenced code blocks, with inline code spans blanked (a link there is no link). */
function prose(markdown: string): string {
  const out: string[] = [];
  let fence: string | undefined;
  for (const line of markdown.split("\n")) {
    const open = /^\s*(```+|~~~+)/.exec(line)?.[1];
    if (fence) {
      if (open && open[0] === fence[0] && open.length >= fence.length) fence = undefined;
      out.push("");
      continue;
    }
    if (open) {
      fence = open;
      out.push("");
      continue;
    }
    out.push(line.replace(/(`+)(?:(?!\1).)+?\1/g, (m) => " ".repeat(m.length)));
  }
  return out.join("\n");
}

/** GitHub's heading slug (github-slugger): lower case, punctuation dropped, each space a hyphen. */
function slug(heading: string): string {
  const text = heading
    .replace(/`([^`]*)`/g, "$1")
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/<[^>]+>/g, "")
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, "").replace(/ /g, "-");
}

/** The anchors a markdown file's headings get, with GitHub's -1, -2 … for repeats. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  let fence = false;
  for (const line of markdown.split("\n")) {
    if (/^\s*(```|~~~)/.test(line)) fence = !fence;
    if (fence) continue;
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    result.add(n === 0 ? base : `${base}-${n}`);
  }
  return result;
}

/** Every link and image target in a markdown file's prose: [text](target), ![alt](target), <a href>, <img src>. */
function linkTargets(markdown: string): string[] {
  const text = prose(markdown);
  const targets: string[] = [];
  for (const m of text.matchAll(/!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) targets.push(m[1]!);
  for (const m of text.matchAll(/<(?:a|img)\s[^>]*?(?:href|src)="([^"]+)"/g)) targets.push(m[1]!);
  return targets;
}

const isExternal = (target: string): boolean => /^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("//");

describe("README.md", () => {
  it("is the way in: at most 400 lines", () => {
    const lines = read("README.md").replace(/\n$/, "").split("\n").length;
    expect(lines).toBeLessThanOrEqual(400);
  });

  it("shows the config sample only as examples/broker.json has it", () => {
    const blocks = [...read("README.md").matchAll(/^```json[^\n]*\n([\s\S]*?)^```\s*$/gm)].map((m) => m[1]!);
    const example = JSON.parse(read("examples/broker.json"));
    for (const block of blocks) expect(JSON.parse(block)).toEqual(example);
  });
});

describe("links in README.md and docs/*.md", () => {
  it("finds the markdown files and their links", () => {
    const files = markdownFiles();
    expect(files.length).toBeGreaterThan(1);
    expect(linkTargets(read("README.md")).filter((t) => !isExternal(t)).length).toBeGreaterThan(0);
  });

  it("the slug rule gives GitHub's anchors", () => {
    expect(slug("pibake images list | prune | fetch")).toBe("pibake-images-list--prune--fetch");
    expect(slug("From scratch with pi-gen: `--engine pi-gen` (20 to 60 minutes)")).toBe("from-scratch-with-pi-gen---engine-pi-gen-20-to-60-minutes");
    expect(slug("Raspberry Pi OS's first boot")).toBe("raspberry-pi-oss-first-boot");
    expect(slug("pibake flash IMAGE [DEVICE]")).toBe("pibake-flash-image-device");
    expect([...anchors("# A\n\n## A\n\n```sh\n# not a heading\n```\n")]).toEqual(["a", "a-1"]);
    expect(linkTargets("[x](a.md#b) `[y](no.md)` ![z](c.svg)\n```\n[w](no.md)\n```\n")).toEqual(["a.md#b", "c.svg"]);
  });

  for (const file of markdownFiles()) {
    it(`every relative link in ${file} leads to a file and, for #anchors, a heading`, () => {
      const problems: string[] = [];
      for (const target of linkTargets(read(file))) {
        if (isExternal(target)) continue;
        const hash = target.indexOf("#");
        const filePart = decodeURIComponent(hash === -1 ? target : target.slice(0, hash));
        const anchor = hash === -1 ? undefined : decodeURIComponent(target.slice(hash + 1));
        const resolved = filePart === "" ? path.join(root, file) : path.resolve(path.dirname(path.join(root, file)), filePart);
        if (!resolved.startsWith(root + path.sep) && resolved !== root) {
          problems.push(`${target}: leaves the repository`);
          continue;
        }
        if (!existsSync(resolved)) {
          problems.push(`${target}: ${path.relative(root, resolved)} does not exist`);
          continue;
        }
        if (anchor !== undefined && resolved.endsWith(".md") && statSync(resolved).isFile()) {
          if (!anchors(readFileSync(resolved, "utf8")).has(anchor)) {
            problems.push(`${target}: ${path.relative(root, resolved)} has no heading with the anchor #${anchor}`);
          }
        }
      }
      expect(problems).toEqual([]);
    });
  }
});
