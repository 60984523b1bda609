#!/bin/bash
# Run by test/acme-arm64.test.ts inside `unshare --mount` (in the test's network namespace): one
# command in the arm64 root filesystem ROOTFS, through qemu-user (binfmt_misc), with /proc and a
# small /dev of this mount namespace only (they go when the command ends) and the environment a
# systemd service gets: PATH and the locale, plus the PIBAKE_* knobs the test sets.
# Usage: arm64-chroot.sh ROOTFS COMMAND [ARG...]
set -euo pipefail
rootfs=$1
shift
mount --make-rprivate /
mount -t proc proc "$rootfs/proc"
mount -t tmpfs -o mode=0755,nosuid dev "$rootfs/dev"
mknod -m 0666 "$rootfs/dev/null" c 1 3
mknod -m 0666 "$rootfs/dev/zero" c 1 5
mknod -m 0666 "$rootfs/dev/random" c 1 8
mknod -m 0666 "$rootfs/dev/urandom" c 1 9
knobs=()
while IFS= read -r -d '' var; do
	if [[ $var == PIBAKE_* ]]; then knobs+=("$var"); fi
done < <(env -0)
exec chroot "$rootfs" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "${knobs[@]}" "$@"
