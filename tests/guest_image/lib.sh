# shellcheck shell=sh
# Shared steps of the TCG test-guest image builds (tests/drbd_guest, tests/raid1_guest): Debian's
# kernel package (whose modules the host kernel cannot load, but a guest kernel can) and a
# BusyBox initramfs with a chosen set of modules and binaries. Sourced by each build-image.sh,
# which sets OUT (the image folder, absolute) before calling gi_begin.
#
# Nothing is installed on the host: packages are only downloaded (`apt-get download`) into
# DEBS (default: OUT/../guest-debs, shared by every guest image of the checkout) and unpacked.
# Needs: apt-get, dpkg-deb, depmod/modprobe (kmod), busybox (busybox-static), cpio, gzip.

PATH=$PATH:/usr/sbin:/sbin

gi_kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}

# gi_begin: resolve the kernel package into KPKG and its release into K; set DEBS.
gi_begin() {
    KPKG=$(gi_kernel_package)
    if [ -z "$KPKG" ]; then
        # A machine whose apt lists were cleaned: fetch them once.
        apt-get update -q >&2
        KPKG=$(gi_kernel_package)
    fi
    [ -n "$KPKG" ] || { echo "build-image: cannot resolve linux-image-amd64" >&2; exit 1; }
    K=${KPKG#linux-image-}
    DEBS=${GUEST_DEBS:-$(dirname "$OUT")/guest-debs}
    mkdir -p "$DEBS"
}

# gi_up_to_date WANT: true when OUT holds an image built from exactly WANT (the stamp).
gi_up_to_date() {
    [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$1" ] && [ -f "$OUT/initrd.gz" ]
}

# gi_deb PACKAGE: download PACKAGE's .deb into DEBS once; print its path.
gi_deb() {
    if ! ls "$DEBS/$1"_*.deb >/dev/null 2>&1; then
        # apt warns that it downloads as root without its sandbox user: expected here.
        (cd "$DEBS" && apt-get download -q "$1" 2>&1 |
            grep -v '^W: Download is performed unsandboxed' >&2) || true
    fi
    ls "$DEBS/$1"_*.deb
}

# gi_kernel R: unpack the kernel into OUT/kroot, copy vmlinuz to OUT, create the initramfs
# skeleton R with busybox.
gi_kernel() {
    rm -rf "$OUT/kroot" "$1"
    mkdir -p "$OUT/kroot"
    dpkg-deb -x "$(gi_deb "$KPKG")" "$OUT/kroot"
    depmod -b "$OUT/kroot" "$K"  # the .deb has no modules.dep
    cp "$OUT/kroot/boot/vmlinuz-$K" "$OUT/vmlinuz"
    mkdir -p "$1/bin" "$1/sbin" "$1/proc" "$1/sys" "$1/dev" "$1/tmp" "$1/etc" \
        "$1/lib/modules/$K" "$1/usr/sbin"
    cp "$(command -v busybox)" "$1/bin/busybox"
}

# gi_modules R MODULE...: copy the modules and their dependencies into R, then index them.
gi_modules() {
    r=$1
    shift
    for m in "$@"; do
        modprobe -d "$OUT/kroot" -S "$K" --show-depends "$m"
    done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
        rel=${f#*/lib/modules/"$K"/}
        mkdir -p "$r/lib/modules/$K/$(dirname "$rel")"
        cp "$f" "$r/lib/modules/$K/$rel"
    done
    cp "$OUT/kroot/lib/modules/$K/modules.order" "$OUT/kroot/lib/modules/$K"/modules.builtin* \
        "$r/lib/modules/$K/"
    depmod -b "$r" "$K"
}

# gi_binaries R FROM PATH...: copy each binary FROM/PATH to R/PATH with the shared libraries
# it needs (resolved by the host's ldd, so FROM may be an unpacked Debian 12 package).
gi_binaries() {
    r=$1
    from=$2
    shift 2
    for b in "$@"; do
        mkdir -p "$r$(dirname "$b")"
        cp -L "$from$b" "$r$b"
        for l in $(ldd "$from$b" | grep -o '/[^ ]*'); do
            mkdir -p "$r$(dirname "$l")"
            cp -L "$l" "$r$l"
        done
    done
}

# gi_pack R WANT: pack R into OUT/initrd.gz, remove the work folders, write the stamp.
gi_pack() {
    (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT/initrd.gz.tmp")
    mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
    rm -rf "$OUT/kroot" "$1"
    echo "$2" > "$OUT/stamp"
}
