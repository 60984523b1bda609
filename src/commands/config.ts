import { loadConfig, type LoadedConfig } from "../config/load.js";
import type { Output } from "../ui/output.js";

/** Load a config and say its warnings; shared by every command that reads one. */
export function loadAndWarn(configPath: string, out: Output): LoadedConfig {
  const loaded = loadConfig(configPath);
  for (const w of loaded.warnings) out.warn(w);
  return loaded;
}

/** A certificate's end date and the days until then. */
export function describeDate(d: Date): string {
  const days = Math.round((d.getTime() - Date.now()) / 86_400_000);
  return `${d.toISOString().slice(0, 10)} (${days} days)`;
}
