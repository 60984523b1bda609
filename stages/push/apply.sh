#!/bin/bash
# pibake push, on the Pi, as root. Standard input: a tar of
#   files/<path>   the new files, with their owners and modes
#   remove         paths (relative to /) to remove, one a line
#   actions        what to run afterwards, one a line: daemon-reload, or a
#                  systemctl verb and a unit (restart mosquitto)
#   push.json      the record of this push, kept in /var/lib/pibake
# Arguments: the broker's TLS port, how many seconds it gets to be healthy, and
# the TLS port of the previous files (for the check after a roll-back).
# Every file is staged beside its target and renamed into place; the old ones
# are kept until the broker is healthy, and put back (then the services
# restarted again) when it is not. Exit 0: applied; 3: rolled back; 4: refused
# before any change (a target's path runs through another user's link); other:
# failed.
set -euo pipefail

tls_port=$1
health_seconds=$2
rollback_tls_port=${3:-$1}
state=/var/lib/pibake
mkdir -p "$state"
work=$(mktemp -d "$state/push-work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in" "$work/backup"
# As root, GNU tar gives each file the owner named in the archive and its mode.
tar -x -C "$work/in" --same-owner --same-permissions -f -

say() { printf 'pibake push: %s\n' "$*" >&2; }

placed=()
while IFS= read -r -d '' src; do
  placed+=("${src#"$work/in/files/"}")
done < <(find "$work/in/files" -type f -print0 2>/dev/null | sort -z)
removed=()
if [ -f "$work/in/remove" ]; then
  while IFS= read -r rel; do
    if [ -n "$rel" ]; then removed+=("$rel"); fi
  done <"$work/in/remove"
fi

# A target's path must not run through a link that someone other than root
# owns: that user could point it anywhere, and this script writes as root. A
# Pi as pibake made it has none in the paths pibake writes (the first user's
# home included).
check_target() {
  local rel=$1 p="" part
  local -a parts
  IFS=/ read -r -a parts <<<"$rel"
  for part in "${parts[@]}"; do
    p="$p/$part"
    if [ -L "$p" ] && [ "$(stat -c %u "$p")" != 0 ]; then
      say "refusing to write /$rel: $p is a link owned by $(stat -c %U "$p") (-> $(readlink "$p")); remove it and push again"
      return 1
    fi
  done
}

# Copies $1 to $2 through a new file beside $2, so that $2 changes in one
# rename. The staged name is random and cp creates it exclusively
# (--remove-destination, then O_EXCL): a link planted under that name by the
# owner of a directory is never written through.
put() {
  local src=$1 target=$2 staged
  mkdir -p "$(dirname "$target")"
  staged=$(mktemp -u "$(dirname "$target")/.pibake-push.XXXXXXXX")
  cp -a --remove-destination "$src" "$staged"
  mv -f -T "$staged" "$target"
}

backup() {
  local rel=$1
  if [ -e "/$rel" ] || [ -L "/$rel" ]; then
    mkdir -p "$(dirname "$work/backup/$rel")"
    cp -a "/$rel" "$work/backup/$rel"
  fi
}

restore() {
  local rel
  for rel in ${placed[@]+"${placed[@]}"} ${removed[@]+"${removed[@]}"}; do
    if [ -e "$work/backup/$rel" ] || [ -L "$work/backup/$rel" ]; then
      put "$work/backup/$rel" "/$rel"
    else
      rm -f "/$rel"
    fi
  done
}

run_actions() {
  local verb unit failed=0
  while read -r verb unit; do
    case "$verb" in
      daemon-reload) systemctl daemon-reload || failed=1 ;;
      restart | try-restart | try-reload-or-restart)
        # A unit restarted twice in a row (apply, then roll back) must not hit its start limit.
        systemctl reset-failed "$unit" 2>/dev/null || true
        systemctl "$verb" "$unit" || { say "systemctl $verb $unit failed"; failed=1; } ;;
      nmcli-reload) nmcli connection reload || failed=1 ;;
      '') ;;
      *) say "unknown action: $verb"; failed=1 ;;
    esac
  done <"$work/in/actions"
  return "$failed"
}

# The broker is healthy when systemd has it active and its TLS port listens, within the bound.
healthy() {
  local port=$1 until=$((SECONDS + health_seconds))
  while [ "$SECONDS" -le "$until" ]; do
    if systemctl is-active --quiet mosquitto && ss -Hltn "sport = :$port" | grep -q .; then
      return 0
    fi
    sleep 1
  done
  return 1
}

for rel in ${placed[@]+"${placed[@]}"} ${removed[@]+"${removed[@]}"}; do
  check_target "$rel" || exit 4
done
for rel in ${placed[@]+"${placed[@]}"} ${removed[@]+"${removed[@]}"}; do
  backup "$rel"
done
for rel in ${placed[@]+"${placed[@]}"}; do
  put "$work/in/files/$rel" "/$rel"
done
for rel in ${removed[@]+"${removed[@]}"}; do
  rm -f "/$rel"
done
say "placed ${#placed[@]} file(s), removed ${#removed[@]}"

actions_ok=0
run_actions || actions_ok=1
if [ "$actions_ok" -eq 0 ] && healthy "$tls_port"; then
  put "$work/in/push.json" "$state/push.json"
  # The status report on the boot partition may have been written while mosquitto restarted: write it again now.
  systemctl start pibake-status.service 2>/dev/null || true
  say "mosquitto is active and listens on port $tls_port"
  exit 0
fi

say "mosquitto is not healthy after the push (active and listening on port $tls_port within ${health_seconds} s); its last lines:"
journalctl -u mosquitto -n 15 --no-pager -o cat >&2 || true
say "restoring the previous files"
restore
run_actions || true
if healthy "$rollback_tls_port"; then
  say "rolled back: the previous files are in place and mosquitto is healthy again"
else
  say "rolled back: the previous files are in place, but mosquitto is still not healthy"
fi
exit 3
