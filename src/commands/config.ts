import type { CAC } from "cac";

/** render, validate, schema, ca: filled in by the render work. */
export function registerConfigCommands(_cli: CAC): void {}
