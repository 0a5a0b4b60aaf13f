#!/bin/busybox sh
# shellcheck shell=dash
# The RAID1 test guest's stand-in for udev's md rules (guest-init.sh starts it): what a real
# Debian guest does on disk hot-plug events, reduced to this guest's one array /dev/md0.
# Debian's kernel has no uevent helper (CONFIG_UEVENT_HELPER is not set) and the initramfs has
# no udev, so it polls sysfs twice a second instead:
#   a member whose disk is gone     -> mdadm --fail detached --remove detached (md forgets it)
#   a virtio disk that is no member -> mdadm --add (md recovers the returning leg)
# It acts only on a running array (not while mdadm --create is still assembling it) and not
# while /run/leg-watch.off exists (capture.py fails and removes members by hand).
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
log=/var/log/leg-watch.log
while true; do
    sleep 0.5
    [ -e /run/leg-watch.off ] && continue
    case $(cat /sys/block/md0/md/array_state 2>/dev/null) in
    clean | active | active-idle | write-pending) ;;
    *) continue ;;
    esac
    for m in /sys/block/md0/md/dev-*; do
        d=${m##*/dev-}
        if [ -e "$m" ] && [ ! -e "/sys/block/$d" ]; then
            echo "$(date +%T) $d gone" >>$log
            mdadm /dev/md0 --fail detached --remove detached >>$log 2>&1
            break
        fi
    done
    for b in /sys/block/vd*; do
        d=${b##*/}
        if [ ! -e "$b" ] || [ -e "/sys/block/md0/md/dev-$d" ] || [ ! -b "/dev/$d" ]; then
            continue
        fi
        echo "$(date +%T) $d appeared" >>$log
        mdadm /dev/md0 --add "/dev/$d" >>$log 2>&1
    done
done
