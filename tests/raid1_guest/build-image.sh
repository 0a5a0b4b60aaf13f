#!/bin/sh
# Build the TCG test guest for the real guest-RAID1 tests: Debian's kernel (md_mod and raid1 as
# modules) and a BusyBox initramfs with mdadm and qemu-guest-agent, both unpacked from their
# Debian packages (never installed on the host). See guest-init.sh.
#
#   build-image.sh OUT_DIR     -> OUT_DIR/vmlinuz, OUT_DIR/initrd.gz, OUT_DIR/stamp
#
# The common steps live in tests/guest_image/lib.sh. The result is rebuilt only when this
# script, lib.sh, guest-init.sh, leg-watch.sh or the kernel package changes (OUT_DIR/stamp).
set -eu
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=/dev/null  # lib.sh is checked on its own
. "$HERE/../guest_image/lib.sh"
gi_begin
want="$KPKG $(cat "$0" "$HERE/../guest_image/lib.sh" "$HERE/guest-init.sh" \
    "$HERE/leg-watch.sh" | cksum)"
gi_up_to_date "$want" && exit 0
echo "build-image: building the RAID1 test guest ($KPKG) in $OUT" >&2

R=$OUT/initrd
gi_kernel "$R"
gi_modules "$R" virtio_pci virtio_blk virtio_console md_mod raid1
rm -rf "$OUT/pkgroot"
for p in mdadm qemu-guest-agent; do
    dpkg-deb -x "$(gi_deb "$p")" "$OUT/pkgroot"
done
gi_binaries "$R" "$OUT/pkgroot" /sbin/mdadm /usr/sbin/qemu-ga
rm -rf "$OUT/pkgroot"
cp "$HERE/guest-init.sh" "$R/init"
cp "$HERE/leg-watch.sh" "$R/bin/leg-watch"
chmod 755 "$R/init" "$R/bin/leg-watch"
gi_pack "$R" "$want"
