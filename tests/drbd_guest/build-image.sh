#!/bin/sh
# Build the TCG test guest for the real-DRBD tests: Debian's kernel (which has DRBD 8.4 as a
# module) and a BusyBox initramfs with drbd-utils, 9p (to reach the host's read-only root, where
# python3 and this checkout live) and virtio-serial (the command channel). See guest-init.sh.
#
#   build-image.sh OUT_DIR     -> OUT_DIR/vmlinuz, OUT_DIR/initrd.gz, OUT_DIR/stamp
#
# Nothing is installed on the host: the kernel package is only downloaded (`apt-get download`)
# and unpacked into OUT_DIR. The result is rebuilt only when this script, guest-init.sh or the
# kernel package changes (OUT_DIR/stamp). Needs: apt-get, dpkg-deb, depmod (kmod), busybox
# (busybox-static), cpio, gzip, drbd-utils; scripts/bootstrap installs them.
set -eu
PATH=$PATH:/usr/sbin:/sbin
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
KPKG=$(kernel_package)
if [ -z "$KPKG" ]; then
    # A machine whose apt lists were cleaned: fetch them once.
    apt-get update -q >&2
    KPKG=$(kernel_package)
fi
[ -n "$KPKG" ] || { echo "build-image: cannot resolve linux-image-amd64" >&2; exit 1; }
K=${KPKG#linux-image-}
want="$KPKG $(cat "$0" "$HERE/guest-init.sh" | cksum)"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$want" ] && [ -f "$OUT/initrd.gz" ]; then
    exit 0
fi
echo "build-image: building the DRBD test guest ($KPKG) in $OUT" >&2

mkdir -p "$OUT/debs"
if ! ls "$OUT/debs/${KPKG}"_*.deb >/dev/null 2>&1; then
    # apt warns that it downloads as root without its sandbox user: expected here.
    (cd "$OUT/debs" && apt-get download -q "$KPKG" 2>&1 |
        grep -v '^W: Download is performed unsandboxed' >&2) || true
    ls "$OUT/debs/${KPKG}"_*.deb >/dev/null
fi
rm -rf "$OUT/kroot" "$OUT/initrd"
mkdir -p "$OUT/kroot"
dpkg-deb -x "$OUT/debs/${KPKG}"_*.deb "$OUT/kroot"
depmod -b "$OUT/kroot" "$K"
cp "$OUT/kroot/boot/vmlinuz-$K" "$OUT/vmlinuz"

R=$OUT/initrd
mkdir -p "$R/bin" "$R/sbin" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/etc" "$R/host" \
    "$R/shared" "$R/lib/modules/$K" "$R/usr/sbin" "$R/usr/lib/drbd"
cp "$(command -v busybox)" "$R/bin/busybox"
for m in virtio_pci virtio_blk virtio_net virtio_console 9p 9pnet_virtio crc32c_generic drbd; do
    modprobe -d "$OUT/kroot" -S "$K" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
    rel=${f#*/lib/modules/"$K"/}
    mkdir -p "$R/lib/modules/$K/$(dirname "$rel")"
    cp "$f" "$R/lib/modules/$K/$rel"
done
cp "$OUT/kroot/lib/modules/$K/modules.order" "$OUT/kroot/lib/modules/$K"/modules.builtin* \
    "$R/lib/modules/$K/"
depmod -b "$R" "$K"
for b in /usr/sbin/drbdadm /usr/sbin/drbdsetup /usr/sbin/drbdmeta /usr/lib/drbd/drbdsetup-84 \
    /usr/lib/drbd/drbdadm-84; do
    cp -L "$b" "$R$b"
    for l in $(ldd "$b" | grep -o '/[^ ]*'); do
        mkdir -p "$R$(dirname "$l")"
        cp -L "$l" "$R$l"
    done
done
cp "$HERE/guest-init.sh" "$R/init"
chmod 755 "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT/initrd.gz.tmp")
mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
rm -rf "$OUT/kroot" "$R"
echo "$want" > "$OUT/stamp"
