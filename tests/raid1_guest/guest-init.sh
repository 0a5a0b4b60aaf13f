#!/bin/busybox sh
# shellcheck shell=dash
# /init of the real guest-RAID1 test guest (tests/raid1_guest/build-image.sh packs it).
#
# It loads md/raid1 and virtio, starts /bin/leg-watch (it plays the part of a Debian guest's
# udev rules for md: a leg that disappears is dropped from the array, a leg that appears is
# added back, so md resyncs it; see leg-watch.sh), then runs qemu-guest-agent on the
# virtio-serial port named org.qemu.guest_agent.0: the host reads /proc/mdstat and sysfs through
# guest-file-open/read and the tests run commands through guest-exec. The array itself is
# created by the test (mdadm through guest-exec), not here.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run/mdadm /var/run /var/log /tmp
for m in virtio_pci virtio_blk virtio_console md_mod raid1; do
    modprobe "$m" || echo "GUEST modprobe $m failed"
done
leg-watch &
# The agent's port appears once virtio_console has probed it: seconds under a loaded TCG host.
# /init must never exit (the kernel would panic), so wait for it as long as it takes.
port=""
while [ -z "$port" ]; do
    for d in /sys/class/virtio-ports/*; do
        [ -e "$d/name" ] && [ "$(cat "$d/name")" = org.qemu.guest_agent.0 ] && port=/dev/${d##*/}
    done
    if [ -z "$port" ] || [ ! -e "$port" ]; then
        port=""
        sleep 0.2
    fi
done
echo "RAID1GUEST READY port=$port"
while true; do
    qemu-ga -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid >>/var/log/qemu-ga.log 2>&1
    sleep 1
done
