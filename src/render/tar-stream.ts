/** tar-stream's pack, made one file with its dependencies by `npm run build` (scripts/bundle.mjs): see config/zod.ts. */
export { pack } from "tar-stream";
