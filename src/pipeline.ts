/**
 * The start of the pipeline, the same for render, build and push: the config
 * opened (its warnings said, its state directory found), then the versions
 * asked, the secrets prepared and the files rendered, in that order.
 */
import { loadConfig, type LoadedConfig } from "./config/load.js";
import type { Model } from "./config/model.js";
import type { Rendered } from "./render/index.js";
import type { Secrets } from "./secrets/index.js";
import { StateDir } from "./secrets/state.js";

export interface OpenedConfig {
  loaded: LoadedConfig;
  model: Model;
  state: StateDir;
}

/** Somewhere to say warnings and progress. */
export interface Say {
  warn(message: string): void;
}

/** The last of the options given (a repeated option arrives as a list). */
function lastOf(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[value.length - 1] : value;
}

/** Load a config and say its warnings. */
export function loadAndWarn(configPath: string, say: Say): LoadedConfig {
  const loaded = loadConfig(configPath);
  for (const w of loaded.warnings) say.warn(w);
  return loaded;
}

/** The config and its state directory. */
export function openConfig(configPath: string, say: Say, stateOption?: string | string[]): OpenedConfig {
  const loaded = loadAndWarn(configPath, say);
  return { loaded, model: loaded.model, state: stateDirOf(loaded.model, stateOption) };
}

/** The state directory: `--state` as given (the last one), else beside the config. */
export function stateDirOf(model: Model, stateOption?: string | string[]): StateDir {
  return StateDir.locate(model.configDir, model.image.name, lastOf(stateOption));
}

export interface Prepared {
  secrets: Secrets;
  rendered: Rendered;
}

/** Node-RED's versions (asked once, recorded in the state directory; `onVersions` hears how), the secrets, then every file the Pi gets. */
export async function prepareAndRender(
  model: Model,
  state: StateDir,
  opts: { onVersions: (message: string) => void; signal?: AbortSignal },
): Promise<Prepared> {
  // Loaded when a command renders: validate, check and ca open a config without them.
  const [{ resolveVersions }, { prepareSecrets }, { render }] = await Promise.all([
    import("./registry/resolve.js"),
    import("./secrets/index.js"),
    import("./render/index.js"),
  ]);
  await resolveVersions(model, state, { onStatus: opts.onVersions, ...(opts.signal ? { signal: opts.signal } : {}) });
  const secrets = await prepareSecrets(model, state);
  return { secrets, rendered: await render(model, secrets) };
}
