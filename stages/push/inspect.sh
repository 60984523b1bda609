#!/bin/bash
# pibake push, on the Pi, as root: what is there now, one tab-separated line
# each, for the host to compare with the render. Arguments: overlay paths
# (relative to /). Prints no file's content, only its sha256, mode, owner and size.
set -uo pipefail

codename=unknown
if [ -r /etc/os-release ]; then
  codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
fi
printf 'release\t%s\n' "${codename:-unknown}"
printf 'arch\t%s\n' "$(dpkg --print-architecture 2>/dev/null || echo unknown)"
# shellcheck disable=SC2016 # dpkg-query's own ${field} syntax, not the shell's
dpkg-query -W -f='${Status}\t${Package}\n' 2>/dev/null | awk -F '\t' '$1 == "install ok installed" { print "package\t" $2 }'
# The records of the last build (the image's marker) and the last push: no secret is in them.
for record in build push; do
  if [ -f "/var/lib/pibake/$record.json" ]; then
    printf '%s-record\t%s\n' "$record" "$(base64 -w0 "/var/lib/pibake/$record.json")"
  fi
done
for rel in "$@"; do
  target="/$rel"
  if [ -f "$target" ] && [ ! -L "$target" ]; then
    printf 'file\t%s\t%s\t%s\n' "$rel" "$(sha256sum <"$target" | cut -d' ' -f1)" "$(stat --printf '%a\t%U\t%G\t%s' "$target")"
  elif [ -e "$target" ] || [ -L "$target" ]; then
    printf 'other\t%s\n' "$rel"
  else
    printf 'missing\t%s\n' "$rel"
  fi
done
printf 'end\n'
