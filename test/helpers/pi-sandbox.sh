#!/bin/bash
# Run by test/acme.test.ts inside `unshare --mount` (in the test's network namespace): the Pi's
# paths for one command, each bound from the test's directory ROOT, so that the rendered scripts
# and mosquitto run unchanged, with the paths they have on the Pi:
#   /etc/hosts, /etc/resolv.conf              freemyip.com, its name server and the CA on 127.0.0.1
#   /etc/ssl/certs/ca-certificates.crt        the test's root instead of the public ones
#   /etc/mosquitto, /etc/ddclient.conf, /usr/local/lib/pibake   the render's files
#   /var/lib/pibake, /var/lib/mosquitto, /run/mosquitto   state, on tmpfs mounts of this namespace
# Usage: pi-sandbox.sh ROOT COMMAND [ARG...]
set -euo pipefail
root=$1
shift
mount --make-rprivate /
# /var/lib, /run and /usr/local/lib of this namespace only: the host's stay as they are.
for dir in var/lib run usr/local/lib; do
	mount -t tmpfs -o mode=0755 pibake-sandbox "/$dir"
done
for dir in var/lib/pibake var/lib/mosquitto run/mosquitto usr/local/lib/pibake; do
	mkdir -p "/$dir"
	mount --bind "$root/$dir" "/$dir"
done
for path in etc/hosts etc/resolv.conf etc/ssl/certs/ca-certificates.crt etc/mosquitto etc/ddclient.conf; do
	mount --bind "$root/$path" "/$path"
done
exec "$@"
