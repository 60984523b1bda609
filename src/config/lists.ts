import { readFileSync } from "node:fs";
import path from "node:path";
import { dataDir } from "../paths.js";

/**
 * The real lists that image.timezone, image.locale and image.keyboard are
 * checked against, read from data/ (made from Debian's packages by
 * scripts/data/update.sh; data/VERSIONS says which) when first needed, since
 * the build host may have none of them and its own could be of another release.
 */

function dataLines(file: string): string[] {
  return readFileSync(path.join(dataDir, file), "utf8").split("\n").filter((l) => l.trim() !== "");
}

function once<T>(make: () => T): () => T {
  let value: T | undefined;
  return () => (value ??= make());
}

/**
 * The names of /usr/share/zoneinfo as trixie's tzdata installs them. Not
 * Intl.supportedValuesOf("timeZone"): that lists only ICU's canonical zones of
 * Node's own ICU (no "UTC", "Etc/UTC" or "GMT", which the Pi accepts), so it
 * would refuse the default, and it could accept names the Pi lacks. trixie's
 * tzdata no longer has the old names (US/Eastern, Europe/Kiev…: tzdata-legacy,
 * not in the image); bookworm's has them too, so this list is right for both.
 */
const timezones = once(() => new Set(dataLines("timezones.txt")));
/** Old names of tzdata-legacy, each with the zone it now is. */
const legacyTimezones = once(() => new Map(dataLines("timezones-legacy.txt").map((l) => l.split(" ") as [string, string])));

/** Locale names of glibc's SUPPORTED (the first column: "en_GB.UTF-8", "de_DE@euro"), which locale-gen can build. */
const locales = once(() => dataLines("locales-SUPPORTED").map((l) => l.split(" ")[0]!));

interface XkbLayout {
  code: string;
  name: string;
  /** Names of its variants ("German (no dead keys)"). */
  variants: string[];
}

/** The layouts of xkb-data's base.lst, with the names of their variants. */
const xkbLayouts = once(() => {
  const layouts = new Map<string, XkbLayout>();
  let section = "";
  for (const line of dataLines("xkb-base.lst")) {
    if (line.startsWith("! ")) {
      section = line.slice(2).trim();
      continue;
    }
    const m = /^\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    // "custom" is a placeholder for a layout file the user writes, which no image has.
    if (section === "layout" && m[1] !== "custom") layouts.set(m[1]!, { code: m[1]!, name: m[2]!, variants: [] });
    else if (section === "variant") {
      const v = /^([^:]+): (.*)$/.exec(m[2]!);
      if (v) layouts.get(v[1]!)?.variants.push(v[2]!);
    }
  }
  return layouts;
});

export function timezoneProblem(tz: string): string | undefined {
  if (timezones().has(tz)) return undefined;
  const now = legacyTimezones().get(tz);
  if (now) return `is an old name that the Pi's tzdata no longer has (only the package tzdata-legacy does): use "${now}"`;
  return `is not a time zone of the tz database${hint(tz, [...timezones()]) || ': give an Area/City name such as "Europe/Berlin" (timedatectl list-timezones lists them)'}`;
}

export function localeProblem(locale: string): string | undefined {
  if (locales().includes(locale)) return undefined;
  return `is not a locale of glibc's supported list (/usr/share/i18n/SUPPORTED)${hint(locale, locales()) || ': give one such as "en_GB.UTF-8" or "de_DE.UTF-8"'}`;
}

export function keymapProblem(code: string): string | undefined {
  const layouts = xkbLayouts();
  if (layouts.has(code)) return undefined;
  // Someone may write the layout's name where its code belongs.
  const byName = [...layouts.values()].find((l) => l.name.toLowerCase() === code.toLowerCase());
  const suggestion = byName ? ` (did you mean "${byName.code}", the code of ${byName.name}?)` : hint(code, [...layouts.keys()]);
  return `is not an XKB layout code of xkb-data${suggestion || ': give one such as "gb", "us" or "de" (localectl list-x11-keymap-layouts lists them)'}`;
}

/**
 * The name Debian's keyboard-configuration is given (pi-gen's KEYBOARD_LAYOUT): the layout's own
 * ("German") or one of its variants as that package lists them ("German - German (no dead keys)").
 * Undefined when the keymap is itself unknown: that problem is reported on the keymap.
 */
export function keyboardLayoutProblem(code: string, name: string): string | undefined {
  const layout = xkbLayouts().get(code);
  if (!layout) return undefined;
  const names = [layout.name, ...layout.variants.map((v) => `${layout.name} - ${v}`)];
  if (names.includes(name)) return undefined;
  const other = [...xkbLayouts().values()].find((l) => l.name === name);
  if (other) return `is the name of XKB layout "${other.code}", not of "${code}" (image.keyboard.keymap): use "${layout.name}" or set keymap to "${other.code}"`;
  return `is not the name of XKB layout "${code}" (image.keyboard.keymap): use "${layout.name}"${layout.variants.length > 0 ? ` or one of its variants, e.g. "${names[1]}"` : ""}`;
}

/** " (did you mean "X"?)" for the list's entry nearest to a value, when one is near enough to be what was meant. */
export function hint(value: string, list: readonly string[]): string {
  const best = nearest(value, list);
  return best === undefined ? "" : ` (did you mean "${best}"?)`;
}

export function nearest(value: string, list: readonly string[]): string | undefined {
  const v = value.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const entry of list) {
    const e = entry.toLowerCase();
    // "berlin" for "Europe/Berlin": the last part alone.
    const d = e === v ? 0 : e.endsWith(`/${v}`) ? 1 : editDistance(v, e);
    if (d < bestDistance) [best, bestDistance] = [entry, d];
  }
  // A slip or two, in a value long enough for that to be a slip: "zz" is near nothing, and
  // "xx_YY.UTF-8" is not "ar_LY.UTF-8".
  return bestDistance <= Math.min(2, Math.floor(value.length / 4)) ? best : undefined;
}

/** Levenshtein distance, one row at a time. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}
