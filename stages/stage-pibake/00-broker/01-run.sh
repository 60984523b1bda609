#!/bin/bash -e
# Unpack the files pibake rendered into the image, from inside its chroot:
# there the image's own links lead inside the image (a base image is someone
# else's, and tar on the host would follow /etc/default -> /x to the host's
# /x). --keep-directory-symlink keeps such a link and writes through it, as
# dpkg does. Owners are set by name in 02-run-chroot.sh, where the image's
# own user ids live; existing directories such as /etc keep their owner and
# mode.
on_chroot -c 'tar --extract --file - --directory / --no-same-owner --preserve-permissions --no-overwrite-dir --keep-directory-symlink' \
	< files/overlay.tar
