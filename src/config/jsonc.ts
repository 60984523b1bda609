/** jsonc-parser's parse, made one file by `npm run build` (scripts/bundle.mjs): see zod.ts. */
export { parse } from "jsonc-parser";
