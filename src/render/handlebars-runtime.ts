/**
 * Handlebars' runtime, all that precompiled templates need (templates.ts), made one
 * file by `npm run build` (scripts/bundle.mjs): see config/zod.ts. Its type is
 * Handlebars' own: the package declares no types for the runtime.
 */
import type HandlebarsNamespace from "handlebars";
import runtime from "handlebars/runtime.js";

export default runtime as unknown as typeof HandlebarsNamespace;
