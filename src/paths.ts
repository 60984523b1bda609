import { fileURLToPath } from "node:url";
import path from "node:path";

/** The package root: where overlays/, stages/ and schema/ live, from src/ and from dist/ alike. */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const overlaysDir = path.join(packageRoot, "overlays");
export const stagesDir = path.join(packageRoot, "stages");
export const schemaFile = path.join(packageRoot, "schema", "pibake.schema.json");
