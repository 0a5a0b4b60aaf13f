"""haagent: a peer-to-peer high-availability agent for hypervisor clusters."""

__version__ = "0.1.0"
