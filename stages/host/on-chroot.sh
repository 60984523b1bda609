#!/bin/bash
# What pi-gen's scripts/common gives a stage's NN-run.sh outside pi-gen:
# on_chroot runs bash with the given arguments inside the image's chroot
# (whose mounts the stage runner has made), with the chroot's own clean
# environment. Sourced by the stage runner; not a stage script itself.
on_chroot() {
	env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
		LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=/root \
		chroot "${ROOTFS_DIR}/" /bin/bash -e "$@"
}
