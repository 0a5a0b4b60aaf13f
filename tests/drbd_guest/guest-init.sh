#!/bin/busybox sh
# shellcheck shell=dash
# /init of the real-DRBD test guest (tests/drbd_guest/build-image.sh packs it).
#
# Kernel command line: gid=N (guest N gets hostname guestN and 10.99.1.N on eth0).
# The host's root file system is mounted read-only at /host over 9p (tag "hostroot"), with the
# guest's own /proc, /sys, /dev and a tmpfs /run mounted over it, so `chroot /host ...` runs the
# host's python3 and this checkout (the fence-peer handler and the stand-in agent endpoint).
# DRBD itself (kernel 8.4 module, drbd-utils) runs in the guest's own root.
#
# Command channel: the virtio-serial port (/dev/vport*p1). Each request is one line
# "ID SHELL-COMMAND"; the answer is a line "R ID EXIT-STATUS NBYTES" followed by NBYTES of the
# command's merged stdout and stderr. Commands run one at a time; a command that starts a
# background process must redirect that process's output itself.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin:/usr/bin:/usr/lib/drbd
ln -s /usr/sbin/drbdadm /sbin/drbdadm  # the kernel runs handlers through /sbin/drbdadm
ln -s /usr/lib/drbd /lib/drbd          # drbdadm finds drbdadm-84 there
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /var/lock /run /var/run /var/lib/drbd
for m in virtio_pci virtio_blk virtio_net virtio_console 9pnet_virtio 9p crc32c_generic drbd; do
    modprobe "$m" || echo "GUEST modprobe $m failed"
done
ME=$(sed -n 's/.*gid=\([0-9]*\).*/\1/p' /proc/cmdline)
hostname "guest$ME"
ip link set lo up
ip addr add "10.99.1.$ME/24" dev eth0
ip link set eth0 up
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host || echo "GUEST 9p mount failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -o bind /dev /host/dev
mount -t tmpfs run /host/run
mkdir -p /host/run/haagent
# The port appears once virtio_console has probed it: seconds under a loaded TCG host. /init
# must never exit (the kernel would panic), so wait for it as long as it takes.
port=""
while [ -z "$port" ]; do
    for p in /dev/vport*p1; do
        [ -e "$p" ] && port=$p
    done
    [ -n "$port" ] || sleep 0.2
done
echo "GUEST$ME READY port=$port"
while true; do
    if ! exec 3<>"$port"; then
        sleep 1
        continue
    fi
    while IFS= read -r line <&3; do
        id=${line%% *}
        cmd=${line#* }
        sh -c "$cmd" >/tmp/cmd.out 2>&1 </dev/null
        rc=$?
        n=$(wc -c </tmp/cmd.out)
        printf 'R %s %s %s\n' "$id" "$rc" "$n" >&3
        cat /tmp/cmd.out >&3
    done
    exec 3<&-
    sleep 0.2
done
