#!/bin/sh
# drbd.sh: the only code in haagent that runs drbd-utils. It runs one command and interprets
# nothing: DRBD's state is parsed in Python (haagent.resources.drbd_events).
#
# Usage: drbd.sh COMMAND RESOURCE
#   status RES     one dump of RES's current state: `drbdsetup events2 RES --now` (the
#                  "exists ..." lines and the closing "exists -"), then exits
#   watch RES      stream RES's state changes: `drbdsetup events2 RES --timestamps` (the
#                  initial "exists" dump first); runs until killed or until events2 dies
#   promote RES    drbdadm primary RES     (DRBD refuses while the peer is Primary or the
#                                           local disk is not UpToDate; never --force)
#   demote RES     drbdadm secondary RES
#   outdate RES    drbdadm outdate RES     (mark this side's disk Outdated; only a Secondary)
#   resume-io RES  drbdadm resume-io RES   (unfreeze I/O frozen by resource-and-stonith
#                                           fencing; only after the peer is known not to write)
#   adjust RES     drbdadm adjust RES      (bring the kernel in line with drbd.conf)
#   up RES         drbdadm up RES          (attach and connect)
#   version        print the DRBD major version this host runs: "8.4" or "9"
#
# Exit status (the contract the Python side relies on):
#   0    success; for status/watch, events2 ran and its stdout is the output
#   64   bad usage: unknown command, missing or malformed resource name
#   69   drbd-utils are not installed (no drbdadm or drbdsetup on PATH)
#   else the status of the drbd-utils command, unchanged (1..63 and 128+N when killed by
#        signal N), with its message on stderr: DRBD refused or failed the operation
#
# DRBD version: DRBD_VERSION=8.4 or DRBD_VERSION=9 in the environment decides; without it the
# first line of /proc/drbd does ("version: 8.4.11 ..." -> 8.4); without /proc/drbd (module not
# loaded yet) it is 9. With 8.4, events2 runs through drbdsetup-84 when that compat binary
# exists (drbd-utils 9 ship it in /usr/lib/drbd; drbdsetup would delegate to it anyway), and
# drbdadm delegates to drbdadm-84 by itself. The events2 syntax and output used here are the
# same in both versions.
#
# The caller applies timeouts (the agent kills a command that hangs); this script never waits.
set -u

usage() {
    echo "usage: drbd.sh status|watch|promote|demote|outdate|resume-io|adjust|up RESOURCE" \
        "| drbd.sh version" >&2
    exit 64
}

version() {
    case "${DRBD_VERSION:-}" in
    8.4 | 9)
        echo "$DRBD_VERSION"
        return 0
        ;;
    "") ;;
    *)
        echo "drbd.sh: DRBD_VERSION must be 8.4 or 9, not '$DRBD_VERSION'" >&2
        exit 64
        ;;
    esac
    if [ -r /proc/drbd ]; then
        case "$(head -n 1 /proc/drbd)" in
        "version: 8."*)
            echo 8.4
            return 0
            ;;
        esac
    fi
    echo 9
}

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "drbd.sh: $1 not found (install drbd-utils)" >&2
        exit 69
    }
}

drbdsetup_cmd() {
    if [ "$(version)" = 8.4 ]; then
        for c in drbdsetup-84 /usr/lib/drbd/drbdsetup-84; do
            if command -v "$c" >/dev/null 2>&1; then
                echo "$c"
                return 0
            fi
        done
    fi
    need drbdsetup
    echo drbdsetup
}

[ $# -ge 1 ] || usage
cmd=$1
if [ "$cmd" = version ]; then
    [ $# -eq 1 ] || usage
    version
    exit 0
fi
[ $# -eq 2 ] || usage
res=$2
# A resource name is never an option and never holds shell or path characters.
case "$res" in
"" | -* | *[!A-Za-z0-9_.+-]*) usage ;;
esac

case "$cmd" in
status)
    setup=$(drbdsetup_cmd) || exit $?
    exec "$setup" events2 "$res" --now
    ;;
watch)
    setup=$(drbdsetup_cmd) || exit $?
    exec "$setup" events2 "$res" --timestamps
    ;;
promote) need drbdadm && exec drbdadm primary "$res" ;;
demote) need drbdadm && exec drbdadm secondary "$res" ;;
outdate) need drbdadm && exec drbdadm outdate "$res" ;;
resume-io) need drbdadm && exec drbdadm resume-io "$res" ;;
adjust) need drbdadm && exec drbdadm adjust "$res" ;;
up) need drbdadm && exec drbdadm up "$res" ;;
*) usage ;;
esac
