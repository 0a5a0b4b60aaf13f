"""The real daemon as the only Raft voter of a cluster that exists only in its config.

Node n1 is a witness (no hypervisor to observe) and the only Raft voter, so its heartbeats
really commit through pysyncobj and its lease is the real one; the hypervisors n2... are named
in the config (fenced by the watchdog) but never run. Their silence is not held against them:
`failure_timeout_s` is 600 s. For tests of the daemon's loop itself (test_loop_under_load.py,
test_pass_pacing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from haagent.consensus import RaftConsensus
from haagent.daemon import Daemon
from haagent.localcluster.ports import free_port


def write_witness_config(
    tmp: Path,
    *,
    cluster: str,
    token: str,
    hypervisors: int,
    memory_mib: int,
    timing: tuple[str, ...] = (),
) -> Path:
    """n1.toml in `tmp`: n1 the witness, then `hypervisors` nodes n2... of `memory_mib` each;
    `timing`: extra `[timing]` lines."""
    lines = [
        "[cluster]",
        f'name = "{cluster}"',
        f'secret = "{cluster}-test-secret-0123456789"',
        "[local]",
        'node = "n1"',
        f'data_dir = "{tmp / "state"}"',
        f'api_listen = "127.0.0.1:{free_port()}"',
        f'api_token = "{token}"',
        "[timing]",
        *timing,
        "failure_timeout_s = 600",
        "[nodes.n1]",
        f'address = "127.0.0.1:{free_port()}"',
        'role = "witness"',
    ]
    for i in range(2, hypervisors + 2):
        lines += [
            f"[nodes.n{i}]",
            f'address = "127.0.0.1:{free_port()}"',
            f"memory_mib = {memory_mib}",
            'fence = "watchdog"',
            "watchdog_timeout_s = 10",
        ]
    path = tmp / "n1.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class OnlyMe(Daemon):
    """The daemon with this node as the only Raft voter (the others exist only in the
    committed state)."""

    def make_consensus(self) -> RaftConsensus:
        cfg = self.config
        return RaftConsensus(
            cfg.node,
            {cfg.node: cfg.me.address},
            cfg.secret,
            cfg.data_dir / "raft",
            wake=self.wake_threadsafe,
        )


@contextlib.asynccontextmanager
async def leased(daemon: Daemon, timeout_s: float = 30.0) -> AsyncIterator[None]:
    """Run `daemon`; enter the block once it holds a lease (fail after `timeout_s`); on the
    way out, even on failure, stop it and wait for it to end."""
    run = asyncio.get_running_loop().create_task(daemon.run())
    try:
        deadline = time.monotonic() + timeout_s
        while not (daemon.consensus and daemon.core.lease_valid(time.monotonic())):
            assert time.monotonic() < deadline, "n1 never got a lease"
            assert not run.done(), run
            await asyncio.sleep(0.05)
        yield
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 90)
