/**
 * Whether a build from an image pibake built can be a fast regeneration:
 * the image copied, files written into it in-process, nothing run inside it.
 * Pure: the base's facts (its build.json and a few of its files) and the new
 * render in, the reasons for the full path out (none: the fast path applies).
 * Each reason names the change and why it needs the image's own programs.
 */
import type { Compression } from "../../../image/compression.js";
import type { Rendered } from "../../../render/index.js";
import { enableLocale, keyboardLayoutOf, type BaseFacts } from "../system.js";
import { missingPackages, type ImageMarker } from "../marker.js";
import { stagePackages } from "../../../render/stage.js";
import { inImageChanges, inImageWork } from "../in-image.js";

/** What the fast path reads of the base before it decides. */
export interface FastBaseFacts {
  marker?: ImageMarker;
  release?: string;
  arch: BaseFacts["arch"];
  installed: Set<string>;
  /** The name of uid 1000 in the image's /etc/passwd. */
  firstUserName?: string;
  localeGen?: string;
  keyboard?: string;
}

/** The options of the build that bear on the choice. */
export interface FastRequest {
  compression: Compression;
  grow?: string;
  shrink: boolean;
  /** --full. */
  full: boolean;
}

export function fullPathReasons(base: FastBaseFacts, rendered: Rendered, request: FastRequest): string[] {
  const m = base.marker;
  if (!m)
    return ["the base was not built by pibake (it has no /var/lib/pibake/build.json): the stage's packages and first-boot set-up must be installed in it"];
  return [...requestReasons(request), ...recordReasons(m), ...systemReasons(base, m, rendered), ...stageReasons(base, m, rendered)];
}

function requestReasons(request: FastRequest): string[] {
  const reasons: string[] = [];
  if (request.compression !== "none")
    reasons.push(`the base is compressed (${request.compression}): the fast path starts from a raw .img, which it copies rather than decompresses`);
  if (request.grow !== undefined && request.grow !== "auto") reasons.push(`--grow ${request.grow} resizes the root file system (resize2fs)`);
  if (request.shrink) reasons.push("--shrink resizes the root file system (resize2fs)");
  if (request.full) reasons.push("--full asks for it");
  return reasons;
}

function recordReasons(m: ImageMarker): string[] {
  if (m.inImage && m.system) return [];
  return [`the base was built by pibake ${m.pibake}, whose build.json does not record what its stage ran in the image: the stage must run again`];
}

/** The first user, locale and keyboard are set by programs in the image (usermod, locale-gen, debconf); the Wi-Fi country is in the boot partition. */
function systemReasons(base: FastBaseFacts, m: ImageMarker, rendered: Rendered): string[] {
  const want = rendered.system;
  const reasons: string[] = [];
  if (base.release !== want.release) reasons.push(`the release changes (${base.release ?? "unknown"} → ${want.release})`);
  if (base.arch !== want.arch) reasons.push(`the architecture changes (${base.arch} → ${want.arch})`);
  if (base.firstUserName !== want.user.name) {
    reasons.push(`the first user is renamed (${base.firstUserName ?? "none"} → ${want.user.name}): usermod and groupmod run in the image`);
  }
  if (base.localeGen !== undefined && enableLocale(base.localeGen, want.locale).changed)
    reasons.push(`the locale ${want.locale} is new to the image: locale-gen runs in it`);
  if (keyboardLayoutOf(base.keyboard) !== want.keyboard.keymap)
    reasons.push(`the keyboard changes to ${want.keyboard.keymap}: debconf records it in the image`);
  if (m.system && (m.system.wifiCountry ?? "") !== (want.wifiCountry ?? "")) {
    reasons.push(
      `the Wi-Fi country changes (${m.system.wifiCountry ?? "none"} → ${want.wifiCountry ?? "none"}): it is written to the boot partition's cmdline.txt, which the fast path leaves as it is`,
    );
  }
  return reasons;
}

/** Packages to install, or any other difference in what the stage runs in the image (units enabled, Node-RED, the Wi-Fi radio). */
function stageReasons(base: FastBaseFacts, m: ImageMarker, rendered: Rendered): string[] {
  const reasons: string[] = [];
  const missing = missingPackages(stagePackages(rendered), base.installed);
  if (missing.length > 0) reasons.push(`packages to install: ${missing.join(", ")}`);
  if (!m.inImage) return reasons;
  const changed = inImageChanges(m.inImage, inImageWork(rendered)).filter((f) => !/packages/.test(f) || missing.length === 0);
  if (changed.length > 0) reasons.push(`what the stage runs in the image changes (${changed.join(", ")}: services enabled, Node-RED, the Wi-Fi radio)`);
  return reasons;
}
