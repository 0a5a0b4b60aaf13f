"""The one home of the defaults for every tunable the core and the shell decide with.

`config.py` reads `[timing]` and `[placement]` against these defaults, and the core's
`AgentSettings` takes its defaults from them, so a new timing profile is a change here and
nowhere else (the README's "Configuration" section shows the same numbers for admins).

Pure: plain frozen dataclasses, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """The `[timing]` table: seconds, each measured on the node's own monotonic clock.

    The relations between them that safety depends on (lease_s >= 3 x heartbeat_s,
    failure_timeout_s > lease_s + stop_grace_s, election_timeout_max_s + ELECTION_SLACK_S <=
    lease_s - heartbeat_s) are checked by the config loader, not here.
    """

    heartbeat_s: float = 1.0  # heartbeat commit period
    lease_s: float = 3.0  # a committed heartbeat keeps the lease this long after its send
    failure_timeout_s: float = 4.0  # silence after which the leader declares a node failed
    stop_grace_s: float = 0.5  # budget to destroy guests after losing the lease
    fence_timeout_s: float = 30.0  # one pass through all fencing levels
    fence_retry_initial_s: float = 1.0  # back-off after a failed fence, doubling ...
    fence_retry_max_s: float = 30.0  # ... up to this
    watchdog_margin_s: float = 1.0  # extra wait before trusting a watchdog reset
    commit_timeout_s: float = 3.0  # any Raft proposal
    start_timeout_s: float = 60.0  # a guest start
    shutdown_timeout_s: float = 60.0  # graceful guest shutdown before destroy
    # Raft election timeout range. When the leader dies, a node's last committed heartbeat may
    # be a period old: the election and the next heartbeat's commit must fit in the rest of
    # its lease, so max + ELECTION_SLACK_S <= lease_s - heartbeat_s.
    election_timeout_min_s: float = 1.0
    election_timeout_max_s: float = 1.6
    initial_placement_wait_s: float = 5.0  # at cold start, wait for every hypervisor to join
    # A guest leaves a node that lacks one of its networks only after this long without a
    # break (a flapping link must not bounce guests).
    network_hold_down_s: float = 10.0
    # One live migration, from the libvirt call to its completion; past it the job is aborted
    # and the guest stays on its source (README, "Live migration").
    migration_timeout_s: float = 300.0


ROBUST_TIMING = Timing()
"""The field defaults above; the built-in default until 2026-12 (README "Timing profiles",
"Upgrading"). It keeps every healthy node's lease with 5 % random frame loss and both cores
saturated (benchmarks/soak.py) even without Raft's quick retransmission (an older kernel): a
lease outlives a ~2 s TCP retransmission stall. It is the one measured steady with 22 agents
sharing this machine's 2 cores also while they came up, and the cheapest when idle. It costs
failover speed: a dead node is declared failed after 4 s."""

BALANCED_TIMING = Timing(
    heartbeat_s=0.4,
    lease_s=1.2,
    failure_timeout_s=1.6,
    stop_grace_s=0.3,
    commit_timeout_s=2.0,
    election_timeout_min_s=0.4,
    election_timeout_max_s=0.6,
)
"""The default: failover in about 1.7 s (fence_dummy) for more idle CPU than `robust` (the
3-node leader 1.1-1.3 % of a core against 0.8-0.9 %; README "Timing profiles"). A heartbeat
commit may be 0.8 s late before the lease lapses: with Raft's quick retransmission
(`consensus.RAFT_RETRANSMIT`: a lost segment resent within ~20-70 ms instead of after Linux's
200 ms minimum, doubling per loss) every healthy node kept its lease with 5 % random frame loss
and both cores saturated. It needs a short minimum RTO: per socket (TCP_RTO_MIN_US, Linux
6.15+), the sysctl `net.ipv4.tcp_rto_min_us` (6.11+) or a route `rto_min` towards the peers;
an agent without the first two says so at start and `haagent check-config --here` fails.
With 12 agents sharing this machine's 2 cores the idle windows were steady once a heartbeat
due during a pass no longer waited for the next deadline (daemon.shell), and so were the idle
minutes at 22; a start-up of all 22 at once still cost some of them their lease (1 to 14
self-fences in four runs; README)."""

FAST_TIMING = Timing(
    heartbeat_s=0.1,
    lease_s=1.0,
    failure_timeout_s=1.4,
    stop_grace_s=0.3,
    commit_timeout_s=2.0,
    election_timeout_min_s=0.3,
    election_timeout_max_s=0.6,
)
"""For small clusters on a quiet machine (the demo): failover in about 1.5 s plus the fence,
at ten times the robust profile's heartbeat traffic. The simulator's scenarios use it."""

# `[timing] profile` picks the defaults of the other timing keys; keys set explicitly win.
TIMING_PROFILES: Mapping[str, Timing] = {
    "robust": ROBUST_TIMING,
    "balanced": BALANCED_TIMING,
    "fast": FAST_TIMING,
}
DEFAULT_TIMING_PROFILE = "balanced"
"""The profile of a config whose `[timing]` names none. Changing it changes the timing of every
such cluster, and agents whose timings differ refuse each other (the config digest): a change
is an upgrade step of its own (README "Upgrading"), and `haagent check-config` and the agent
say when a config leaves the profile to this default."""


@dataclass(frozen=True)
class PlacementLimits:
    """The `[placement]` table: how hard the cluster tries before an admin has to look."""

    max_concurrent_starts: int = 4  # per node, so a failover is not a boot storm
    max_start_failures: int = 3  # starts/crashes on one node before that node gives up
    failure_reset_s: float = 600.0  # a crash after running this long starts a fresh count
    max_relocations: int = 2  # moves to other nodes after that, then the error state


DEFAULT_TIMING = TIMING_PROFILES[DEFAULT_TIMING_PROFILE]

# A lease this long outlives Linux's default retransmission back-off (200 + 400 + 800 ms after
# three losses of one segment) plus a heartbeat period; a shorter one needs a short minimum RTO
# (consensus.RAFT_RETRANSMIT, consensus.retransmit_gap).
SLOW_RETRANSMIT_SAFE_LEASE_S = 3.0
# What a leader's death costs beyond the election timeout before a node's next heartbeat
# commits (pre-vote, vote, the new leader's first append, a pass): see Timing.
ELECTION_SLACK_S = 0.2
DEFAULT_LIMITS = PlacementLimits()
DEFAULT_WATCHDOG_TIMEOUT_S = 10.0  # a node's hardware watchdog timeout, when not configured
