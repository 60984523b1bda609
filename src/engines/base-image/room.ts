import { MiB } from "./resize.js";

/**
 * Room for the stage's packages, from apt's own figures for exactly those
 * packages on this base (a simulated install in the image's chroot) instead
 * of a constant: the archives apt downloads into the image's cache, plus the
 * installed size, plus a margin.
 */
export interface AptSizes {
  /** Bytes of .deb archives apt fetches (into /var/cache/apt/archives, in the image). */
  downloadBytes: number;
  /** Bytes the installed packages add, as apt reckons it from their Installed-Size. */
  installBytes: number;
}

/**
 * The margin over apt's figures: 30 % because Installed-Size counts file
 * sizes rounded to 1 KiB, while ext4 gives every small file a 4 KiB block
 * (Node.js's Debian packages are thousands of small files) and maintainer
 * scripts write caches and logs of their own; and 768 MiB left free for the
 * running Pi on a card whose first boot did not expand the root file system:
 * the first boot itself writes about 100 MiB (journal, keys, cloud-init), and
 * pibake check warns under 500 MiB.
 */
export const ROOM_MARGIN = { fraction: 0.3, bytes: 768 * MiB };

const UNITS: Record<string, number> = { B: 1, kB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12 };

/** "159 MB", "12.3 kB", "1,234 kB": apt's sizes are SI. */
function bytesOf(number: string, unit: string): number {
  return Math.round(Number(number.replace(/,/g, "")) * (UNITS[unit] ?? NaN));
}

/**
 * apt-get install's summary, in the two forms apt writes it: apt 2.x
 * (bookworm: "Need to get 159 MB of archives." and "After this operation,
 * 713 MB of additional disk space will be used.") and apt 3.x (trixie:
 * "Download size: 159 MB" and "Space needed: 713 MB / 2,048 MB available").
 * Nothing to install gives neither: no room needed.
 */
export function parseAptSizes(text: string): AptSizes {
  const size = String.raw`([\d.,]+) ?([kMGT]?B)`;
  const download = new RegExp(String.raw`Need to get (?:[\d.,]+ ?[kMGT]?B/)?${size} of archives|Download size: (?:[\d.,]+ ?[kMGT]?B / )?${size}`).exec(text);
  const install = new RegExp(String.raw`After this operation, ${size} of additional disk space will be used|Space needed: ${size}`).exec(text);
  const pick = (m: RegExpExecArray | null) => {
    if (!m) return 0;
    const [n, u] = m[1] !== undefined ? [m[1], m[2]!] : [m[3]!, m[4]!];
    return bytesOf(n, u);
  };
  return { downloadBytes: pick(download), installBytes: pick(install) };
}

/** What the root file system must have free for the packages: apt's download and installed size, plus the margin. */
export function roomForPackages(s: AptSizes): number {
  if (s.downloadBytes === 0 && s.installBytes === 0) return 0;
  return s.downloadBytes + Math.ceil(s.installBytes * (1 + ROOM_MARGIN.fraction)) + ROOM_MARGIN.bytes;
}
