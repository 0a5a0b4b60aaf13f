#!/usr/bin/env python3
"""What divergence detection (issue 8 item 6) costs, at 22 nodes / 1 000 guests by default.

    .venv/bin/python benchmarks/divergence_cost.py [--nodes 22] [--guests 1000] [--repeat 2000]

Prints, median and p99 over --repeat runs (per-call times in microseconds):
1. the heartbeat path, per heartbeat: encode + decode + apply of a heartbeat with and without
   a checkpoint, and `Checkpointer.offer` on a state that is not a checkpoint (the O(1) test
   every apply pays); the added bytes on the wire;
2. per reconcile pass: `divergence.judge` over every node's reported checkpoint (O(nodes));
3. off the loop, once every CHECKPOINT_EVERY commands: `state_digest` of the whole state (on
   the Checkpointer's thread), and its share of one apply when spread over those commands;
4. once per agent start: `config_digest`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from benchmarks.scale import build
from haagent.agent import AgentSettings
from haagent.checkpointer import Checkpointer
from haagent.commands import Heartbeat, decode, encode
from haagent.core.digests import CHECKPOINT_EVERY, RecordDigests, config_digest, state_digest
from haagent.core.divergence import judge
from haagent.model import Checkpoint, ClusterState
from haagent.statemachine import apply


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, p99) of one call, in microseconds."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def heartbeat_round_trip(state: ClusterState, hb: Heartbeat) -> ClusterState:
    command = decode(encode(hb))
    new, result = apply(state, command)
    assert result.accepted
    return new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=22)
    ap.add_argument("--guests", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2000)
    a = ap.parse_args()
    nodes, specs, state = build(a.nodes, a.guests)
    names = sorted(state.nodes)
    digest = state_digest(state)
    for n in names:  # every node has reported a checkpoint, as in a running cluster
        state, _ = apply(state, Heartbeat(n, f"{n}-1", 1, Checkpoint(CHECKPOINT_EVERY, digest)))
    me = names[0]
    plain = Heartbeat(me, f"{me}-1", 12345)
    with_cp = Heartbeat(me, f"{me}-1", 12345, Checkpoint(CHECKPOINT_EVERY * 40, digest))
    extra = len(encode(with_cp)) - len(encode(Heartbeat(me, f"{me}-1", 12345)))
    print(
        f"{a.nodes} nodes, {a.guests} guests; load average {os.getloadavg()[0]:.2f}; "
        f"checkpoint every {CHECKPOINT_EVERY} commands"
    )
    hb_plain = timed(lambda: heartbeat_round_trip(state, plain), a.repeat)
    hb_cp = timed(lambda: heartbeat_round_trip(state, with_cp), a.repeat)
    print(
        f"heartbeat encode+decode+apply: {hb_plain[0]:.1f} us (p99 {hb_plain[1]:.1f}) without a "
        f"checkpoint, {hb_cp[0]:.1f} us (p99 {hb_cp[1]:.1f}) with one; "
        f"+{extra} bytes on the wire"
    )
    checkpointer = Checkpointer()
    not_a_checkpoint = state.with_applied(CHECKPOINT_EVERY * 40 + 1)
    try:
        offer = timed(lambda: checkpointer.offer(not_a_checkpoint), a.repeat)
    finally:
        checkpointer.stop()
    print(f"Checkpointer.offer per apply: {offer[0]:.2f} us (p99 {offer[1]:.2f})")
    own = {CHECKPOINT_EVERY: digest}
    judged = timed(lambda: judge(state, me, a.nodes, own), a.repeat)
    print(
        f"divergence.judge per pass ({a.nodes} reports): {judged[0]:.1f} us (p99 {judged[1]:.1f})"
    )
    full = timed(lambda: state_digest(state), max(20, a.repeat // 100))
    # What the checkpointer thread pays: since its last checkpoint every node heartbeated
    # (22 node records changed) and a few guests changed; the other records come from the memo.
    memo: RecordDigests = {}
    state_digest(state, memo)
    later = state
    for n in names:
        later, _ = apply(later, Heartbeat(n, f"{n}-1", 2, Checkpoint(CHECKPOINT_EVERY, digest)))
    for g in sorted(later.guests)[:8]:
        rec = later.guests[g]
        later = later.with_guest(replace(rec, reason=rec.reason + "."))

    def incremental() -> None:
        state_digest(later, dict(memo))

    inc = timed(incremental, max(20, a.repeat // 100))
    print(
        f"state_digest (checkpointer thread, every {CHECKPOINT_EVERY} commands): "
        f"{full[0] / 1000:.2f} ms from scratch (p99 {full[1] / 1000:.2f}), "
        f"{inc[0] / 1000:.2f} ms (p99 {inc[1] / 1000:.2f}) with the memo after "
        f"{len(names)} node and 8 guest changes; {inc[0] / CHECKPOINT_EVERY:.1f} us per command "
        f"when spread"
    )
    settings = AgentSettings(cluster="bench", node=me, nodes=nodes, guests=tuple(specs))
    cfg = timed(lambda: config_digest(settings), 20)
    print(f"config_digest (once per agent start): {cfg[0] / 1000:.2f} ms")


if __name__ == "__main__":
    main()
