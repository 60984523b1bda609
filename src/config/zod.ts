/**
 * The part of zod that schema.ts uses, by name. `npm run build` replaces the
 * compiled file (dist/config/zod.js) by one file holding only these and what
 * they need (scripts/bundle.mjs): zod is some 95 modules, its 60 locales
 * among them, and loading them one by one was the largest part of a render's
 * start-up. Without that step this file still works, as the plain re-export it is.
 * A zod function schema.ts starts to use is added here.
 */
export { array, boolean, config, discriminatedUnion, enum, literal, number, strictObject, string, toJSONSchema, union } from "zod";
export type { core, infer, input, output, RefinementCtx, ZodType } from "zod";
