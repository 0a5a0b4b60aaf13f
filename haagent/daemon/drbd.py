"""The daemon's DRBD part: the replica watchers and the fence-peer socket of one node.

Present only on a hypervisor holding a replica of some guest (`Config.drbd_resources()`);
a witness or a host of shared storage only runs neither.

- `replicas` (`DrbdReplicas`): one events2 watcher per local resource, folded in the event loop
  and waking it on every change; the observer reads `replicas.snapshot()` each pass, and the
  executor runs promote, demote and resume-io through `resources/drbd.sh`.
- the fence socket (`FenceServer` + `ConsensusFenceAuthority`): DRBD's fence-peer and
  unfence-peer handlers ask it to make sure the peer cannot write; every success rests on a
  fresh commit (README "DRBD").

Order (the shell's): `serve` binds the socket before the watchdog is armed, so an unusable
path is a clear start-up error; `start` starts the watchers once the loop runs; `close` stops
both, also after a failed start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from haagent.ports import Consensus
from haagent.resources.drbd import DrbdReplicas
from haagent.resources.drbd_authority import ConsensusFenceAuthority
from haagent.resources.drbd_fence import FenceServer

log = logging.getLogger("haagent")

# One drbd.sh command. Above the fence-peer handler's default 60 s: with DRBD 8.4 a promotion
# while the peer is gone runs that handler inside `drbdadm primary`.
DRBD_COMMAND_TIMEOUT_S = 90.0
# The authority answers within the commit timeout; this bound only guards against a bug there.
FENCE_REQUEST_GRACE_S = 5.0


class DrbdService:
    def __init__(
        self,
        node: str,
        resources: Sequence[str],
        fence_socket: Path,
        wake: Callable[[], None],
        command_timeout_s: float = DRBD_COMMAND_TIMEOUT_S,
        wrapper: Sequence[str] | None = None,
    ) -> None:
        """`wrapper`: the argv prefix that runs drbd.sh (default: `sh resources/drbd.sh`)."""
        self.node = node
        self.fence_socket = fence_socket
        self.command_timeout_s = command_timeout_s
        self.replicas = (
            DrbdReplicas(resources, wake, command_timeout_s)
            if wrapper is None
            else DrbdReplicas(resources, wake, command_timeout_s, wrapper)
        )
        self.fence_server: FenceServer | None = None

    async def serve(self, consensus: Consensus, commit_timeout_s: float) -> None:
        """Bind the fence socket (raises OSError)."""
        authority = ConsensusFenceAuthority(self.node, consensus, commit_timeout_s, time.time)
        server = FenceServer(self.fence_socket, authority, commit_timeout_s + FENCE_REQUEST_GRACE_S)
        await server.start()
        self.fence_server = server
        log.info("serving DRBD fence-peer requests on %s", self.fence_socket)

    def start(self) -> None:
        self.replicas.start()

    async def close(self) -> None:
        await self.replicas.stop()
        if self.fence_server is not None:
            await self.fence_server.close()
            self.fence_server = None
