import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The layers of src/: data flows one way (config → secrets → render → engines
 * → image → flash), with host/ the build machine beneath the engines, flash,
 * the commands and the bench. Imports between the folders of src/ (and its
 * top-level files) must form no cycle, type-only imports included; what
 * the base-image engine shares with others is in host/ or image/, so that the
 * pi-gen engine, the commands, the bench, flash, host/, image/, push/ and
 * check/ never import engines/base-image/ (engines/index.ts loads it for a
 * build that uses it). push/ and check/ work on a running Pi, beside the
 * build: no engine, image or flash code. What host/ and config/ share with the
 * output (the secret registry) is in host/, so neither imports ui/. Only
 * host/'s runners start processes (the bench aside).
 */

const src = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "src");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith(".ts") ? [p] : [];
  });
}

/** Relative module specifiers a file imports or re-exports, statically or with import(). */
export function importedSpecifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/\bfrom\s*["'](\.[^"']*)["']|\bimport\s*\(\s*["'](\.[^"']*)["']\s*\)|^\s*import\s*["'](\.[^"']*)["']/gm)) {
    out.push((m[1] ?? m[2] ?? m[3])!);
  }
  return out;
}

/** A file's place in src/ as a dependency-graph node: its top folder, or the file itself at the top. */
function nodeOf(file: string): string {
  const rel = path.relative(src, file).split(path.sep);
  return rel.length > 1 ? `${rel[0]}/` : rel[0]!.replace(/\.ts$/, "");
}

interface Edge {
  from: string;
  to: string;
}

function fileEdges(): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(src)) {
    for (const spec of importedSpecifiers(readFileSync(file, "utf8"))) {
      const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, ".ts");
      if (!target.startsWith(`${src}${path.sep}`)) continue;
      edges.push({ from: file, to: target });
    }
  }
  return edges;
}

/** Every cycle's nodes, one per strongly connected component with more than one node. */
export function cycles(graph: Map<string, Set<string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1) out.push(comp.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

const edges = fileEdges();
const rel = (f: string) => path.relative(src, f).split(path.sep).join("/");

describe("layers of src/", () => {
  it("finds the imports it checks", () => {
    // A scan that found nothing would pass every rule below.
    expect(edges.length).toBeGreaterThan(100);
    expect(edges.some((e) => rel(e.from) === "engines/base-image/build.ts" && rel(e.to) === "host/loop.ts")).toBe(true);
  });

  it("has no import cycle between its folders and top-level files", () => {
    const graph = new Map<string, Set<string>>();
    const why = new Map<string, string>();
    for (const e of edges) {
      const a = nodeOf(e.from);
      const b = nodeOf(e.to);
      if (a === b) continue;
      if (!graph.has(a)) graph.set(a, new Set());
      graph.get(a)!.add(b);
      if (!why.has(`${a} ${b}`)) why.set(`${a} ${b}`, `${rel(e.from)} → ${rel(e.to)}`);
    }
    const found = cycles(graph).map((c) => {
      const inCycle = new Set(c);
      const links = [...why].filter(([k]) => k.split(" ").every((n) => inCycle.has(n))).map(([, v]) => v);
      return `${c.join(", ")}: ${links.join("; ")}`;
    });
    expect(found).toEqual([]);
  });

  it("keeps the base-image engine's modules to itself", () => {
    const outside = edges
      .filter((e) => rel(e.to).startsWith("engines/base-image/") && /^(engines\/pigen|commands|bench|flash|host|image|push|check)\//.test(rel(e.from)))
      .map((e) => `${rel(e.from)} → ${rel(e.to)}`);
    expect(outside).toEqual([]);
  });

  it("keeps host/ beneath everything that uses it", () => {
    const up = edges
      .filter((e) => rel(e.from).startsWith("host/") && /^(engines|commands|bench|flash|image|render|secrets|config|registry|push|check|ui)\//.test(rel(e.to)))
      .map((e) => `${rel(e.from)} → ${rel(e.to)}`);
    expect(up).toEqual([]);
  });

  it("keeps push/ and check/ beside the build: no engine, image or flash code", () => {
    const into = edges
      .filter((e) => /^(push|check)\//.test(rel(e.from)) && /^(engines|image|flash|commands|bench)\/|^build(-plan)?\.ts$/.test(rel(e.to)))
      .map((e) => `${rel(e.from)} → ${rel(e.to)}`);
    expect(into).toEqual([]);
  });

  it("starts every process through host/: only its runners import execa or child_process (the bench aside)", () => {
    const starters = sourceFiles(src)
      .filter((f) => !rel(f).startsWith("bench/"))
      .filter((f) => /\bfrom\s*["'](execa|(node:)?child_process)["']|\bimport\s*\(\s*["'](execa|(node:)?child_process)["']\s*\)/.test(readFileSync(f, "utf8")))
      .map(rel)
      .sort();
    expect(starters).toEqual(["host/process.ts", "host/query.ts"]);
  });

  it("keeps config/ beneath what uses it, and free of ui/", () => {
    const up = edges
      .filter((e) => rel(e.from).startsWith("config/") && /^(ui|secrets|render|engines|image|flash|push|check|commands|bench|registry)\//.test(rel(e.to)))
      .map((e) => `${rel(e.from)} → ${rel(e.to)}`);
    expect(up).toEqual([]);
  });
});

describe("the cycle finder", () => {
  const g = (pairs: [string, string][]) => {
    const m = new Map<string, Set<string>>();
    for (const [a, b] of pairs) {
      if (!m.has(a)) m.set(a, new Set());
      m.get(a)!.add(b);
    }
    return m;
  };
  it.each([
    {
      name: "a chain",
      pairs: [
        ["a", "b"],
        ["b", "c"],
      ] as [string, string][],
      want: [],
    },
    {
      name: "two folders importing each other",
      pairs: [
        ["a", "b"],
        ["b", "a"],
      ] as [string, string][],
      want: [["a", "b"]],
    },
    {
      name: "a loop of three",
      pairs: [
        ["a", "b"],
        ["b", "c"],
        ["c", "a"],
        ["c", "d"],
      ] as [string, string][],
      want: [["a", "b", "c"]],
    },
  ])("$name", ({ pairs, want }) => {
    expect(cycles(g(pairs))).toEqual(want);
  });

  it("reads static, re-exported, type-only and dynamic imports", () => {
    const text = [
      `import { a } from "./a.js";`,
      `import type { B } from "../b.js";`,
      `export { c } from "./c.js";`,
      `import {\n  d,\n  e,\n} from "./de.js";`,
      `const f = await import("../f.js");`,
      `import "./side.js";`,
      `import { execa } from "execa";`,
    ].join("\n");
    expect(importedSpecifiers(text)).toEqual(["./a.js", "../b.js", "./c.js", "./de.js", "../f.js", "./side.js"]);
  });
});
