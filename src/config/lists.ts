import { readFileSync } from "node:fs";
import path from "node:path";
import { dataDir } from "../paths.js";
import { editDistance } from "../spelling.js";
import { RELEASES, type Release } from "./model.js";

/**
 * The real lists that image.timezone, image.locale and image.keyboard are
 * checked against, one set per release, read from data/RELEASE/ (made from
 * Debian's packages by scripts/data/update.sh; VERSIONS says which) when first
 * needed, since the build host may have none of them, or another release's.
 */

interface XkbLayout {
  code: string;
  name: string;
  /** Names of its variants ("German (no dead keys)"). */
  variants: string[];
}

interface Lists {
  /**
   * The names of /usr/share/zoneinfo as the release's tzdata installs them. Not
   * Intl.supportedValuesOf("timeZone"): that lists only ICU's canonical zones of
   * Node's own ICU (no "UTC", "Etc/UTC" or "GMT", which the Pi accepts), so it
   * would refuse the default, and it could accept names the Pi lacks.
   */
  timezones: Set<string>;
  /** From trixie on, old names (US/Eastern, Europe/Kiev…) are only in tzdata-legacy, which the image lacks: each with the zone it now is. */
  legacy: Map<string, string>;
  /** Locale names of glibc's SUPPORTED (the first column: "en_GB.UTF-8", "de_DE@euro"), which locale-gen can build. */
  locales: string[];
  /** The layouts of xkb-data's base.lst, with the names of their variants. */
  layouts: Map<string, XkbLayout>;
}

const loaded = new Map<Release, Lists>();

function listsOf(release: Release): Lists {
  let lists = loaded.get(release);
  if (!lists) {
    const lines = (file: string) =>
      readFileSync(path.join(dataDir, release, file), "utf8")
        .split("\n")
        .filter((l) => l.trim() !== "");
    lists = {
      timezones: new Set(lines("timezones.txt")),
      legacy: new Map(lines("timezones-legacy.txt").map((l) => l.split(" ") as [string, string])),
      locales: lines("locales-SUPPORTED").map((l) => l.split(" ")[0]!),
      layouts: xkbLayouts(lines("xkb-base.lst")),
    };
    loaded.set(release, lists);
  }
  return lists;
}

function xkbLayouts(lines: string[]): Map<string, XkbLayout> {
  const layouts = new Map<string, XkbLayout>();
  let section = "";
  for (const line of lines) {
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
}

/**
 * Each check runs twice: without a release (in the schema, so that a typing slip is reported
 * with every other problem) against every release's list; then, once the config is whole
 * (rules.ts), against the list of the image's release. The second only speaks of what the first
 * let through: a name only another release has.
 */
const otherReleases = (release: Release, has: (l: Lists) => boolean) => RELEASES.filter((r) => r !== release && has(listsOf(r)));

export function timezoneProblem(tz: string, release?: Release): string | undefined {
  if (release) {
    const lists = listsOf(release);
    if (lists.timezones.has(tz)) return undefined;
    const now = lists.legacy.get(tz);
    if (now) return `is an old name that ${release}'s tzdata no longer has (only tzdata-legacy does, which the image lacks): use "${now}"`;
    const others = otherReleases(release, (l) => l.timezones.has(tz));
    if (others.length > 0) return `is a time zone of ${others.join(" and ")}'s tzdata, not ${release}'s${hint(tz, [...lists.timezones])}`;
  }
  if (RELEASES.some((r) => listsOf(r).timezones.has(tz))) return undefined;
  const all = [...new Set(RELEASES.flatMap((r) => [...listsOf(r).timezones]))];
  return `is not a time zone of the tz database${hint(tz, all) || ': give an Area/City name such as "Europe/Berlin" (timedatectl list-timezones lists them)'}`;
}

export function localeProblem(locale: string, release?: Release): string | undefined {
  if (release) {
    if (listsOf(release).locales.includes(locale)) return undefined;
    const others = otherReleases(release, (l) => l.locales.includes(locale));
    if (others.length > 0) return `is a locale of ${others.join(" and ")}'s glibc, not ${release}'s${hint(locale, listsOf(release).locales)}`;
  }
  if (RELEASES.some((r) => listsOf(r).locales.includes(locale))) return undefined;
  const all = [...new Set(RELEASES.flatMap((r) => listsOf(r).locales))];
  return `is not a locale of glibc's supported list (/usr/share/i18n/SUPPORTED)${hint(locale, all) || ': give one such as "en_GB.UTF-8" or "de_DE.UTF-8"'}`;
}

export function keymapProblem(code: string, release?: Release): string | undefined {
  if (release) {
    if (listsOf(release).layouts.has(code)) return undefined;
    const others = otherReleases(release, (l) => l.layouts.has(code));
    if (others.length > 0) return `is an XKB layout of ${others.join(" and ")}'s xkb-data, not ${release}'s${hint(code, [...listsOf(release).layouts.keys()])}`;
  }
  if (RELEASES.some((r) => listsOf(r).layouts.has(code))) return undefined;
  const layouts = RELEASES.flatMap((r) => [...listsOf(r).layouts.values()]);
  // Someone may write the layout's name where its code belongs.
  const byName = layouts.find((l) => l.name.toLowerCase() === code.toLowerCase());
  const suggestion = byName ? ` (did you mean "${byName.code}", the code of ${byName.name}?)` : hint(code, [...new Set(layouts.map((l) => l.code))]);
  return `is not an XKB layout code of xkb-data${suggestion || ': give one such as "gb", "us" or "de" (localectl list-x11-keymap-layouts lists them)'}`;
}

/**
 * The name Debian's keyboard-configuration is given (pi-gen's KEYBOARD_LAYOUT): the layout's own
 * ("German") or one of its variants as that package lists them ("German - German (no dead keys)").
 * Undefined when the keymap is itself unknown: that problem is reported on the keymap.
 */
export function keyboardLayoutProblem(code: string, name: string, release?: Release): string | undefined {
  const layouts = (release ? [release] : RELEASES).map((r) => listsOf(r).layouts.get(code)).filter((l) => l !== undefined);
  const layout = layouts[0];
  if (!layout) return undefined;
  const names = layouts.flatMap((l) => [l.name, ...l.variants.map((v) => `${l.name} - ${v}`)]);
  if (names.includes(name)) return undefined;
  const other = (release ? [release] : RELEASES).flatMap((r) => [...listsOf(r).layouts.values()]).find((l) => l.name === name);
  if (other)
    return `is the name of XKB layout "${other.code}", not of "${code}" (image.keyboard.keymap): use "${layout.name}" or set keymap to "${other.code}"`;
  const variant = layout.variants.length > 0 ? ` or one of its variants, e.g. "${layout.name} - ${layout.variants[0]}"` : "";
  return `is not the name of XKB layout "${code}"${release ? ` in ${release}'s xkb-data` : ""} (image.keyboard.keymap): use "${layout.name}"${variant}`;
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

/** The name of an XKB layout ("German" for "de"), for image.keyboard.layout; undefined when the release lacks the code. */
export function keymapName(code: string, release: Release): string | undefined {
  return listsOf(release).layouts.get(code)?.name;
}
