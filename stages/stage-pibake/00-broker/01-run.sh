#!/bin/bash -e
# Unpack the files pibake rendered into the image. Owners are set by name in
# 02-run-chroot.sh, inside the image, where the image's own user ids live;
# existing directories such as /etc keep their owner and mode.
tar --extract --file files/overlay.tar --directory "${ROOTFS_DIR}" \
	--no-same-owner --preserve-permissions --no-overwrite-dir
