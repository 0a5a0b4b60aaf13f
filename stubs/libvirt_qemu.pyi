# Minimal stub of libvirt-python's libvirt_qemu: only what haagent uses.
from libvirt import virDomain

def qemuAgentCommand(domain: virDomain, cmd: str, timeout: int, flags: int) -> str: ...
