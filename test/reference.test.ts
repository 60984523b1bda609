/**
 * One source for what each config field means: its .meta() in src/config/schema.ts. The
 * JSON Schema editors read carries it (description, default, examples), and the field
 * reference in docs/ is made from it by `npm run schema`; these tests fail when the
 * committed reference, the schema or the prose of the docs disagree with it.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { configJsonSchema, configSchema, describedJsonSchema } from "../src/config/schema.js";
import { fieldReference, schemaFields, withDefaultsInDescriptions, withFieldReference, type SchemaNode } from "../src/config/reference.js";
import { repoRoot } from "./helpers/cli.js";

const read = (rel: string): string => readFileSync(path.join(repoRoot, rel), "utf8");
const docs = (): string[] =>
  readdirSync(path.join(repoRoot, "docs"))
    .filter((n) => n.endsWith(".md"))
    .sort()
    .map((n) => `docs/${n}`);

/** Every property of every object anywhere in a JSON Schema, by its path (alternatives share one). */
function everyProperty(node: SchemaNode, at = ""): [string, SchemaNode][] {
  const out: [string, SchemaNode][] = [];
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    const p = at ? `${at}.${name}` : name;
    out.push([p, child], ...everyProperty(child, p));
  }
  if (node.items) out.push(...everyProperty(node.items, `${at}[]`));
  for (const alternative of [...(node.anyOf ?? []), ...(node.oneOf ?? [])]) out.push(...everyProperty(alternative, at));
  return out;
}

/** Every schema inside a zod schema, itself first: fields, list items, alternatives, and what optional and default wrap. */
function zodNodes(schema: z.ZodType): z.ZodType[] {
  const def = (schema as unknown as { _zod: { def: { shape?: Record<string, z.ZodType>; innerType?: z.ZodType; element?: z.ZodType; options?: z.ZodType[] } } })
    ._zod.def;
  return [
    schema,
    ...[...Object.values(def.shape ?? {}), ...(def.innerType ? [def.innerType] : []), ...(def.element ? [def.element] : []), ...(def.options ?? [])].flatMap(
      zodNodes,
    ),
  ];
}

const fieldPaths = (): Set<string> => new Set(schemaFields(describedJsonSchema()).map((f) => f.path));
const SECTIONS = Object.keys(describedJsonSchema().properties!).filter((k) => k !== "$schema");
/** A field's path as the docs write it (`mqtt.users[0].name`, `mqtt.users[].name`), or a setting after it (`nodeRed.install: "build"`). */
const FIELD_IN_DOCS_RE = new RegExp(`^((?:${SECTIONS.join("|")})(?:\\.[A-Za-z]+|\\[\\d*\\])+)(?::.*)?$`);
/** Code spans in the docs that look like a field and are not one. */
const NOT_FIELDS: Record<string, string> = {
  "image.json": "the facts file beside a cached official image (docs/commands.md)",
};

describe("the JSON Schema describes every field", () => {
  it("gives every field a description in plain sentences, as editors show it on hover", () => {
    const problems: string[] = [];
    for (const [field, node] of everyProperty(configJsonSchema())) {
      const d = node.description;
      if (!d) problems.push(`${field}: no description`);
      else if (/[`|<>*\n]|\]\(/.test(d)) problems.push(`${field}: markdown or a line break in ${JSON.stringify(d)}`);
      else if (!d.endsWith(".")) problems.push(`${field}: not a sentence (no final full stop): ${JSON.stringify(d)}`);
    }
    expect(problems).toEqual([]);
  });

  it("ends each description of a field that has a default with it in words, since editors show no default on hover", () => {
    const props = (configJsonSchema() as { properties: Record<string, SchemaNode & { properties: Record<string, SchemaNode> }> }).properties;
    expect(props.image!.properties.release!.description).toBe(
      'The Raspberry Pi OS release to build: trixie (Debian 13) or bookworm (Debian 12). Default: "trixie".',
    );
    expect(props.image!.properties.release!.default).toBe("trixie");
    expect(props.network!.properties.dns!.description).toMatch(/ Default: \["9\.9\.9\.9", "1\.1\.1\.1"\]\.$/);
    expect(props.user!.properties.sshKeys!.description).toMatch(/ Default: none\.$/);
    // Applied by load.ts, not by zod, yet still the default an editor should offer.
    expect(props.mqtt!.properties.autosaveInterval!.default).toBe(300);
    // A section that is absent is the same as {}: its fields say their defaults.
    expect(props.nodeRed!.description).not.toMatch(/Default/);
    for (const { path: field, node } of schemaFields(configJsonSchema())) {
      if (node.default !== undefined && !(typeof node.default === "object" && node.default !== null && Object.keys(node.default).length === 0)) {
        expect(node.description, field).toMatch(/ Default: .+\.$/);
      }
    }
  });

  it("gives examples only that the field accepts", () => {
    let examples = 0;
    for (const node of zodNodes(configSchema)) {
      for (const example of (z.globalRegistry.get(node)?.examples ?? []) as unknown[]) {
        examples++;
        const result = node.safeParse(example);
        expect(result.success, `${JSON.stringify(example)}: ${result.error?.message}`).toBe(true);
      }
    }
    expect(examples).toBeGreaterThan(20);
  });

  it("shows examples on the fields a person has to make up", () => {
    const fields = Object.fromEntries(schemaFields(configJsonSchema()).map((f) => [f.path, f.node]));
    for (const field of [
      "image.name",
      "image.timezone",
      "user.password",
      "user.sshKeys",
      "network.address",
      "network.gateway",
      "mqtt.users[].topics[].topic",
      "tls.domain",
      "ddns.token",
      "updates.reboot.time",
      "firewall.lan",
    ]) {
      expect(fields[field]?.examples?.length, field).toBeGreaterThan(0);
    }
  });
});

describe("the field reference in docs/ is made from the schema", () => {
  it.each(docs())("%s has the field reference the schema makes (else: npm run schema)", (doc) => {
    const text = read(doc);
    expect(text, `${doc} and src/config/schema.ts disagree: run npm run schema`).toBe(withFieldReference(text, describedJsonSchema()));
  });

  it("has every field, with its default, in docs/config.md", () => {
    const config = read("docs/config.md");
    expect(config).toContain(fieldReference(describedJsonSchema(), "*"));
    for (const { path: field } of schemaFields(describedJsonSchema())) {
      expect(config, field).toContain(/[.[]/.test(field) ? `| \`${field}\` |` : `\n### ${field}\n`);
    }
    expect(config).toContain('| `image.release` | The Raspberry Pi OS release to build: trixie (Debian 13) or bookworm (Debian 12). | `"trixie"` |');
    expect(config).toContain('| `network.address` | The Pi\'s static IPv4 address with its prefix length. E.g. `"192.168.1.10/24"`. | required |');
    expect(config).toContain("| `updates.reboot` | Reboots when an update needs one");
  });

  it("names only fields that exist, in the docs' prose and in the descriptions", () => {
    const fields = fieldPaths();
    const named: [string, string][] = [];
    for (const file of ["README.md", ...docs()]) {
      for (const m of read(file).matchAll(/`([^`\n]+)`/g)) {
        const field = FIELD_IN_DOCS_RE.exec(m[1]!)?.[1];
        if (field && !(field in NOT_FIELDS)) named.push([file, field]);
      }
    }
    for (const { path: at, node } of schemaFields(describedJsonSchema())) {
      for (const m of (node.description ?? "").matchAll(new RegExp(`\\b(?:${SECTIONS.join("|")})(?:\\.[A-Za-z]+)+`, "g")))
        named.push([`the description of ${at}`, m[0]]);
    }
    expect(named.length).toBeGreaterThan(50);
    const unknown = named.filter(([, field]) => !fields.has(field.replace(/\[\d+\]/g, "[]"))).map(([where, field]) => `${where}: ${field}`);
    expect(unknown, "these name a field the config does not have").toEqual([]);
  });
});

describe("fieldReference", () => {
  const schema: SchemaNode = {
    properties: {
      box: {
        description: "A box.",
        properties: {
          size: { description: "How big.", default: 3 },
          owner: { description: "Whose.", examples: ["me"] },
          items: { description: "What is in it.", items: { properties: { name: { description: "Its name." } }, required: ["name"] } },
          key: { description: "A secret.", anyOf: [{}, { properties: { env: { description: "A variable." } } }] },
        },
        required: ["owner"],
      },
    },
  };

  it("has a row per field, at every depth, with the default or whether it is required", () => {
    expect(fieldReference(schema, "box").split("\n")).toEqual([
      "| field | meaning | default |",
      "| --- | --- | --- |",
      "| `box.size` | How big. | `3` |",
      '| `box.owner` | Whose. E.g. `"me"`. | required |',
      "| `box.items` | What is in it. | optional |",
      "| `box.items[].name` | Its name. | required |",
      // A value that may be a string is one field, whatever its object forms hold.
      "| `box.key` | A secret. | optional |",
    ]);
    expect(fieldReference(schema, "*")).toMatch(/^### box\n\nA box\. Optional\.\n\n\| field/);
  });

  it("refuses variants that describe a field they share differently", () => {
    const variants: SchemaNode = {
      properties: {
        dns: {
          description: "DNS.",
          oneOf: [{ properties: { interval: { description: "Seconds." } } }, { properties: { interval: { description: "Minutes." } } }],
        },
      },
    };
    expect(() => fieldReference(variants, "*")).toThrow("dns.interval: the variants describe it differently");
  });

  it("rewrites only the marked regions of a document", () => {
    const doc = "# Title\n\nhand-written\n\n<!-- begin fields: box (made) -->\nstale\n<!-- end fields -->\n\nmore prose\n";
    expect(withFieldReference(doc, schema)).toBe(
      `# Title\n\nhand-written\n\n<!-- begin fields: box (made) -->\n\n${fieldReference(schema, "box")}\n\n<!-- end fields -->\n\nmore prose\n`,
    );
  });

  it("adds the default to a description for editors, but not an empty section's", () => {
    const editors = withDefaultsInDescriptions(
      structuredClone({ properties: { a: { description: "A.", default: ["x", "y"] }, b: { description: "B.", default: {} } } }),
    );
    expect(editors.properties.a.description).toBe('A. Default: ["x", "y"].');
    expect(editors.properties.b.description).toBe("B.");
  });
});
