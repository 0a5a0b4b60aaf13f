#!/bin/sh
# Build the TCG test guest for the real-DRBD tests: Debian's kernel (which has DRBD 8.4 as a
# module) and a BusyBox initramfs with drbd-utils, 9p (to reach the host's read-only root, where
# python3 and this checkout live) and virtio-serial (the command channel). See guest-init.sh.
#
#   build-image.sh OUT_DIR     -> OUT_DIR/vmlinuz, OUT_DIR/initrd.gz, OUT_DIR/stamp
#
# The common steps live in tests/guest_image/lib.sh. The result is rebuilt only when this
# script, lib.sh, guest-init.sh or the kernel package changes (OUT_DIR/stamp). Needs what
# lib.sh needs plus drbd-utils; scripts/bootstrap installs them.
set -eu
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=/dev/null  # lib.sh is checked on its own
. "$HERE/../guest_image/lib.sh"
gi_begin
want="$KPKG $(cat "$0" "$HERE/../guest_image/lib.sh" "$HERE/guest-init.sh" | cksum)"
gi_up_to_date "$want" && exit 0
echo "build-image: building the DRBD test guest ($KPKG) in $OUT" >&2

R=$OUT/initrd
gi_kernel "$R"
mkdir -p "$R/host" "$R/shared" "$R/usr/lib/drbd"
gi_modules "$R" virtio_pci virtio_blk virtio_net virtio_console 9p 9pnet_virtio crc32c_generic drbd
gi_binaries "$R" "" /usr/sbin/drbdadm /usr/sbin/drbdsetup /usr/sbin/drbdmeta \
    /usr/lib/drbd/drbdsetup-84 /usr/lib/drbd/drbdadm-84
cp "$HERE/guest-init.sh" "$R/init"
chmod 755 "$R/init"
gi_pack "$R" "$want"
