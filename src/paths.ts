import { fileURLToPath } from "node:url";
import path from "node:path";

/** The package root: where overlays/, stages/, schema/ and data/ live, from src/ and from dist/ alike. */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const overlaysDir = path.join(packageRoot, "overlays");
export const stagesDir = path.join(packageRoot, "stages");
export const schemaFile = path.join(packageRoot, "schema", "pibake.schema.json");
/** Lists from Debian's packages that the config is checked against (scripts/data/update.sh). */
export const dataDir = path.join(packageRoot, "data");
