"""The daemon's `Mirrors` until the guest-RAID1 adapter lands (issue 10, the real parts: a
/proc/mdstat parser read through qemu-guest-agent, libvirt attach of a network leg).

`UnknownMirrors` knows nothing and does nothing, and says so: every array is unknown (so the
core never commits a leg fresh, and never re-attaches one on a guess), and an attach or detach
fails with a HypervisorError naming what is missing. Leg staleness still follows the holders'
committed state (haagent.core.raid1), which needs no observation from inside the guest.
"""

from __future__ import annotations

from haagent.ports import HypervisorError, MirrorObservation

MISSING = "no guest-RAID1 adapter in this build (observing and attaching legs is not available)"


class UnknownMirrors:
    async def observe(self, guest: str) -> MirrorObservation | None:
        return None

    async def attach_leg(self, guest: str, leg_id: str, source: str) -> None:
        raise HypervisorError(f"attach leg {leg_id} of {guest}: {MISSING}")

    async def detach_leg(self, guest: str, leg_id: str) -> None:
        raise HypervisorError(f"detach leg {leg_id} of {guest}: {MISSING}")
