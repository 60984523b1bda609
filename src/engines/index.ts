/**
 * The engines' entry points for the build command. The base-image engine is
 * loaded only when a build uses it (--base), so that a pi-gen build and every
 * other command do without its code.
 */
export function loadBaseEngine() {
  return import("./base-image/index.js");
}

export type BaseEngine = Awaited<ReturnType<typeof loadBaseEngine>>;
