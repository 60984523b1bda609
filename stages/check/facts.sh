#!/bin/bash
# pibake check --ssh, on the Pi, as the first user (no sudo): what a running
# broker says of itself, one tab-separated line each, for the host to judge.
# Argument: the DNS name ddclient keeps up to date (empty without ddns).
# Prints no secret: ddclient's cache holds addresses and times, not the token.
set -uo pipefail
domain=${1:-}

bounded() { timeout 10 "$@"; }

printf 'uptime\t%s\n' "$(cut -d' ' -f1 /proc/uptime)"

if units=$(bounded systemctl --failed --no-legend --plain --no-pager 2>&1); then
	while read -r unit _; do
		[ -n "$unit" ] && printf 'failed-unit\t%s\n' "$unit"
	done <<<"$units"
	printf 'failed-units-read\n'
else
	printf 'error\tsystemctl --failed\t%s\n' "$(tr '\n\t' '  ' <<<"$units" | cut -c1-200)"
fi

for unit in mosquitto ddclient pibake-firstboot; do
	props=$(bounded systemctl show "$unit.service" -p LoadState -p ActiveState -p SubState -p ActiveEnterTimestampMonotonic -p NRestarts 2>/dev/null | tr '\n' '\t')
	printf 'unit\t%s\t%s\n' "$unit" "${props%$'\t'}"
done

# Node-RED's first-boot install: its marker holds the time it finished (world-readable).
if [ -r /var/lib/pibake/firstboot.done ]; then
	printf 'firstboot-done\t%s\n' "$(head -c 64 /var/lib/pibake/firstboot.done | tr -d '\n\t')"
fi

# ddclient's cache (Debian's default path; world-readable): one line per name it updates.
cache=/var/cache/ddclient/ddclient.cache
if [ -n "$domain" ] && [ -r "$cache" ]; then
	line=$(grep -v '^#' "$cache" | awk -v d="$domain" '$NF == d { print $1 }' | tail -n1)
	printf 'ddclient-cache\t%s\n' "${line:--}"
elif [ -n "$domain" ]; then
	printf 'ddclient-cache\tnone\n'
fi

# tls.mode "acme": the renewal's timer and its last result (world-readable, no secret in it).
if [ -r /var/lib/pibake/acme.status ] || [ -e /etc/systemd/system/pibake-acme.timer ]; then
	printf 'acme-timer\t%s\n' "$(bounded systemctl is-active pibake-acme.timer 2>/dev/null)"
	if [ -r /var/lib/pibake/acme.status ]; then
		printf 'acme-status\t%s\n' "$(head -c 4096 /var/lib/pibake/acme.status | base64 -w0)"
	fi
fi

for mount in / /boot/firmware; do
	if [ -d "$mount" ]; then
		df -P -B1 "$mount" 2>/dev/null | awk -v m="$mount" 'NR == 2 { print "disk\t" m "\t" $2 "\t" $4 }'
	fi
done

awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 } END { print "memory\t" t * 1024 "\t" a * 1024 }' /proc/meminfo

status=/boot/firmware/pibake-status.txt
if [ -r "$status" ]; then
	printf 'status\t%s\t%s\n' "$(stat -c %Y "$status")" "$(head -c 16384 "$status" | base64 -w0)"
fi
# What the last pibake push recorded (no secret is in it).
if [ -r /var/lib/pibake/push.json ]; then
	printf 'push-record\t%s\n' "$(head -c 65536 /var/lib/pibake/push.json | base64 -w0)"
fi
printf 'now\t%s\n' "$(date +%s)"
printf 'end\n'
