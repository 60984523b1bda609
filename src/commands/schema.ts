import { configJsonSchema } from "../config/schema.js";

/** pibake schema: the config's JSON Schema on standard output. */
export function schemaCommand(): void {
  process.stdout.write(JSON.stringify(configJsonSchema(), null, 2) + "\n");
}
