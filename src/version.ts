import { readFileSync } from "node:fs";
import path from "node:path";
import { packageRoot } from "./paths.js";

/** pibake's version, from its package.json, read once. */
export const PIBAKE_VERSION: string = (JSON.parse(readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version;
