/**
 * The config's fields as its JSON Schema describes them, and the field reference in
 * docs/ made from it: each field's words are written once, in its .meta() in schema.ts,
 * and editors (on hover) and the docs show the same. Pure: JSON Schema in, text out.
 */

/** A node of the JSON Schema that zod makes: only what the reference reads. */
export interface SchemaNode {
  description?: string;
  default?: unknown;
  examples?: unknown[];
  properties?: Record<string, SchemaNode>;
  required?: string[];
  items?: SchemaNode;
  anyOf?: SchemaNode[];
  oneOf?: SchemaNode[];
}

/** One field of the config: its JSON path (`[]` for a list's items) and its schema node. */
export interface Field {
  path: string;
  node: SchemaNode;
  required: boolean;
}

/**
 * Every field, parents before their fields, as often as it occurs: a field of several
 * alternatives (ddns's providers) once for each. Alternatives that are all objects are
 * variants of one section, whose fields are the section's; a value that may also be a
 * plain string (a secret) is one field, not a section.
 */
export function schemaFields(node: SchemaNode, at = ""): Field[] {
  const fields: Field[] = [];
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    const path = at ? `${at}.${name}` : name;
    fields.push({ path, node: child, required: node.required?.includes(name) ?? false }, ...schemaFields(child, path));
  }
  if (node.items) fields.push(...schemaFields(node.items, `${at}[]`));
  const alternatives = node.anyOf ?? node.oneOf ?? [];
  if (alternatives.length > 0 && alternatives.every((a) => a.properties)) for (const a of alternatives) fields.push(...schemaFields(a, at));
  return fields;
}

/** A JSON value on one line, with a space after each comma and colon, as a person writes it. */
export function inlineJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(inlineJson).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    return entries.length === 0 ? "{}" : `{ ${entries.map(([k, v]) => `${JSON.stringify(k)}: ${inlineJson(v)}`).join(", ")} }`;
  }
  return JSON.stringify(value);
}

/** A default as the end of a sentence; an empty section ({}) says nothing its fields do not. */
function defaultInWords(value: unknown): string | undefined {
  if (Array.isArray(value) && value.length === 0) return "none";
  if (value !== null && typeof value === "object" && Object.keys(value).length === 0) return undefined;
  return inlineJson(value);
}

/**
 * The schema for editors: each description ends with the default in words, since
 * editors show a field's description on hover but not its default. Changes `schema`.
 */
export function withDefaultsInDescriptions<T extends SchemaNode>(schema: T): T {
  for (const { node } of schemaFields(schema)) {
    const words = node.default === undefined ? undefined : defaultInWords(node.default);
    if (words !== undefined && node.description !== undefined) node.description += ` Default: ${words}.`;
  }
  return schema;
}

/** Each field once: the variants of a section must describe a field they share alike. */
function mergedFields(schema: SchemaNode): Field[] {
  const byPath = new Map<string, Field>();
  for (const field of schemaFields(schema)) {
    const seen = byPath.get(field.path);
    if (!seen) byPath.set(field.path, field);
    else if (seen.node.description !== field.node.description || inlineJson(seen.node.default) !== inlineJson(field.node.default)) {
      throw new Error(`${field.path}: the variants describe it differently: give them one description and one default`);
    }
  }
  return [...byPath.values()];
}

const code = (text: string): string => `\`${text}\``;

function tableRow(field: Field): string {
  const examples = field.node.examples?.length ? ` E.g. ${field.node.examples.map((e) => code(inlineJson(e))).join(", ")}.` : "";
  const fallback = field.node.default !== undefined ? code(inlineJson(field.node.default)) : field.required ? "required" : "optional";
  return `| ${code(field.path)} | ${field.node.description ?? ""}${examples} | ${fallback} |`;
}

/** The table of a top-level section's fields, every depth. */
function sectionTable(fields: Field[], section: string): string[] {
  const rows = fields.filter((f) => f.path.startsWith(`${section}.`) || f.path.startsWith(`${section}[]`));
  if (rows.length === 0) return [];
  return ["| field | meaning | default |", "| --- | --- | --- |", ...rows.map(tableRow)];
}

/**
 * The markdown for `which`: "*" for every section (a heading, its description, and the
 * table of its fields), or a section's name for that section's table alone.
 */
export function fieldReference(schema: SchemaNode, which: string): string {
  const fields = mergedFields(schema);
  if (which !== "*") {
    const table = sectionTable(fields, which);
    if (table.length === 0) throw new Error(`the config has no section ${which} with fields`);
    return table.join("\n");
  }
  const out: string[] = [];
  for (const section of fields.filter((f) => !f.path.includes(".") && !f.path.includes("[]"))) {
    const presence = section.required ? "Required." : "Optional.";
    out.push(`### ${section.path}`, "", `${section.node.description ?? ""} ${presence}`, "");
    const table = sectionTable(fields, section.path);
    if (table.length > 0) out.push(...table, "");
  }
  return out.join("\n").trimEnd();
}

/** A region of a markdown file that fieldReference fills: `<!-- begin fields: WHICH … -->` up to `<!-- end fields -->`. */
const REGION_RE = /(<!-- begin fields: (\S+)[^\n]*-->)[\s\S]*?(<!-- end fields -->)/g;

/** The markdown with each marked region made again from the schema; the text around them is kept as it is. */
export function withFieldReference(markdown: string, schema: SchemaNode): string {
  return markdown.replace(REGION_RE, (_all, begin: string, which: string, end: string) => `${begin}\n\n${fieldReference(schema, which)}\n\n${end}`);
}
