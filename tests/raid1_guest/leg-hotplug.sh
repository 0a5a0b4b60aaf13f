#!/bin/busybox sh
# shellcheck shell=dash
# The kernel's hotplug helper in the RAID1 test guest (guest-init.sh installs it): what udev's
# md rules do in a real Debian guest, reduced to this guest's one array /dev/md0.
#   remove of a virtio disk -> mdadm --fail detached --remove detached (md forgets the leg)
#   add of a virtio disk    -> mdadm --add (md resyncs the returning leg)
# Boot-time disks appear before /dev/md0 exists and are left alone.
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
[ "$SUBSYSTEM" = block ] || exit 0
case "$DEVNAME" in vd[a-z]) ;; *) exit 0 ;; esac
[ -e /sys/block/md0/md ] || exit 0
{
    echo "$(date +%T) $ACTION $DEVNAME"
    case "$ACTION" in
    remove) mdadm /dev/md0 --fail detached --remove detached ;;
    add)
        # devtmpfs creates the node on its own; wait for it briefly.
        i=0
        while [ ! -b "/dev/$DEVNAME" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        mdadm /dev/md0 --add "/dev/$DEVNAME"
        ;;
    esac
    echo "$(date +%T) $ACTION $DEVNAME done: $?"
} >>/var/log/leg-hotplug.log 2>&1
