#!/bin/sh
# Chassis control program for ipmi_sim (lan.conf: chassis_control "chassis.sh DIR HOST").
#
# ipmi_sim appends the operation, so the calls look like:
#   chassis.sh DIR HOST get power [boot]     -> prints "power:1" / "power:0" (and "boot:default")
#   chassis.sh DIR HOST set power 0|1        -> runs DIR/HOST.hook power 0|1, then records it
#   chassis.sh DIR HOST set reset 1 | set boot X | set shutdown X | set identify A B
#
# The simulated power state lives in DIR/HOST.power (1 when the file is missing) and every
# change is appended to DIR/HOST.events. If DIR/HOST.hook is executable it runs before the new
# state is recorded: the local demo cluster uses it to SIGKILL the node's agent on "power 0",
# which is what a real power-off does to it. A hook that fails makes the IPMI command fail and
# leaves the power state unchanged, so a BMC never claims a power-off that did not happen;
# hooks must therefore be idempotent (killing an already dead process counts as success).
# DIR is an argument, not this script's own folder, because the script ships inside the
# package and must not write there.
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 DIR HOST get|set|check ..." >&2
    exit 1
fi
dir=$1; host=$2; op=$3; shift 3
st="$dir/$host.power"
log="$dir/$host.events"
hook="$dir/$host.hook"
[ -f "$st" ] || echo 1 > "$st"

now() { date +%s.%N; }

# Runs the hook (if any) with "$1 $2"; returns its exit status.
run_hook() {
    if [ -x "$hook" ]; then
        if ! "$hook" "$1" "$2"; then
            echo "$(now) hook $1 $2 failed" >> "$log"
            echo "chassis.sh: hook $hook $1 $2 failed" >&2
            return 1
        fi
    fi
    return 0
}

case $op in
get)
    for p in "$@"; do
        case $p in
        power) echo "power:$(cat "$st")" ;;
        boot) echo "boot:default" ;;
        *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done
    ;;
set)
    while [ $# -gt 0 ]; do
        p=$1
        case $p in
        identify)
            # Two values (interval and force); nothing to simulate.
            shift; [ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift
            continue
            ;;
        esac
        if [ $# -lt 2 ]; then
            echo "Missing value for: $p"; exit 1
        fi
        v=$2; shift 2
        case $p in
        power)
            case $v in 0|1) ;; *) echo "Invalid power value: $v"; exit 1 ;; esac
            echo "$(now) set power $v" >> "$log"
            run_hook power "$v" || exit 1
            echo "$v" > "$st.tmp" && mv -f "$st.tmp" "$st"
            ;;
        reset|boot|shutdown)
            echo "$(now) set $p $v" >> "$log"
            run_hook "$p" "$v" || exit 1
            ;;
        *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done
    ;;
check)
    # Nothing to check: the simulated chassis has no console or serial link.
    exit 1
    ;;
*)
    echo "Unknown operation: $op"; exit 1
    ;;
esac
exit 0
