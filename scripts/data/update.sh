#!/usr/bin/env bash
# Regenerates data/RELEASE/: the lists that `pibake validate` checks image.timezone, image.locale
# and image.keyboard against, taken from the Debian packages a Raspberry Pi OS image of RELEASE has
# (tzdata, locales, xkb-data; tzdata-legacy for the old zone names, from trixie on). apt downloads
# them with its own private state in a temporary directory, so the build host's apt (and its
# release) is left alone.
#   scripts/data/update.sh [RELEASE...]   (default: trixie bookworm; needs apt-get, dpkg-deb and a Debian mirror)
set -euo pipefail
if [ "$#" -eq 0 ]; then set -- trixie bookworm; fi
if [ "$#" -gt 1 ]; then
  for r in "$@"; do "$0" "$r"; done
  exit 0
fi
release="$1"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
out="$(cd "$(dirname "$0")/../.." && pwd)/data/$release"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $mirror $release main" >"$work/sources.list"
: >"$work/status"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::Status=$work/status"
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root
)
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq download tzdata locales xkb-data)
# Before trixie, tzdata had the old names itself.
(cd "$work" && apt-get "${apt_opts[@]}" -qq download tzdata-legacy 2>/dev/null) || true
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root-$(basename "$deb" | cut -d_ -f1)"; done

# Time zones: every TZif file or link below /usr/share/zoneinfo that tzdata installs (posixrules,
# localtime and the posix/ and right/ copies are not zones one chooses).
zones="$work/root-tzdata/usr/share/zoneinfo"
(cd "$zones" && find . \( -type f -o -type l \) -printf '%P\n' | sort | while read -r z; do
  case "$z" in posixrules | localtime | posix/* | right/*) continue ;; esac
  if [ "$(head -c 4 "$z")" = TZif ]; then echo "$z"; fi
done) >"$out/timezones.txt"

# Old names that only tzdata-legacy has, each with the zone it is a link to (or the zone of tzdata
# with the same content); right/ (leap-second zones) is not a name for a system's time zone.
legacy="$work/root-tzdata-legacy/usr/share/zoneinfo"
mkdir -p "$legacy"
(cd "$legacy" && find . \( -type f -o -type l \) -printf '%P\n' | { grep -v '^right/' || true; } | sort | while read -r z; do
  if grep -qxF "$z" "$out/timezones.txt"; then continue; fi
  if [ -L "$z" ]; then
    target="$(realpath -m --relative-to=. "$(dirname "$z")/$(readlink "$z")")"
  else
    sum="$(sha256sum <"$z")"
    target="$(cd "$zones" && while read -r m; do if [ "$(sha256sum <"$m")" = "$sum" ]; then echo "$m"; break; fi; done <"$out/timezones.txt")"
  fi
  if grep -qxF "$target" "$out/timezones.txt"; then printf '%s %s\n' "$z" "$target"; fi
done) >"$out/timezones-legacy.txt"

# Locales: glibc's list of supported locales as Debian's locales package ships it.
cp "$work/root-locales/usr/share/i18n/SUPPORTED" "$out/locales-SUPPORTED"

# Keyboards: the "! layout" and "! variant" sections of xkb-data's base.lst, as they are.
awk '/^! /{keep = ($2 == "layout" || $2 == "variant")} keep' \
  "$work/root-xkb-data/usr/share/X11/xkb/rules/base.lst" >"$out/xkb-base.lst"

printf 'Debian %s\n' "$release" >"$out/VERSIONS"
for deb in "$work"/*.deb; do
  printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)"
done >>"$out/VERSIONS"
