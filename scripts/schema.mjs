// npm run schema: after a change to src/config/schema.ts, writes what is made from it:
// the JSON Schema editors read, and the field reference in docs/*.md (test/reference.test.ts checks both).
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { configJsonSchema, describedJsonSchema } from "../dist/config/schema.js";
import { withFieldReference } from "../dist/config/reference.js";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
writeFileSync(path.join(root, "schema/pibake.schema.json"), JSON.stringify(configJsonSchema(), null, 2) + "\n");
for (const name of readdirSync(path.join(root, "docs")).filter((n) => n.endsWith(".md"))) {
  const file = path.join(root, "docs", name);
  const before = readFileSync(file, "utf8");
  const after = withFieldReference(before, describedJsonSchema());
  if (after !== before) {
    writeFileSync(file, after);
    console.log(`wrote docs/${name}`);
  }
}
