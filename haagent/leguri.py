"""How other nodes reach a raid1 leg: a strict parser of `nbd://` and `iscsi://` URIs.

    nbd://HOST[:PORT]/EXPORT            NBD export (port 10809 unless given)
    iscsi://HOST[:PORT]/IQN/LUN         iSCSI target and LUN (port 3260 unless given)

HOST is a DNS name, an IPv4 address or a bracketed IPv6 address. Nothing else is accepted: no
user info, query, fragment or percent-encoding (each would be passed on to QEMU and read there
differently than here), no control characters, at most `MAX_URI_LEN` characters. Pure: the
config check and the libvirt disk XML read the same `LegUri`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_URI_LEN = 1024
NBD_PORT = 10809
ISCSI_PORT = 3260
MAX_LUN = 16383

_HOST_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_URI_RE = re.compile(r"(nbd|iscsi)://(\[[^\]/]*\]|[^/:\[\]]+)(?::([0-9]{1,5}))?/(.+)")
_EXPORT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:-]{0,254}")
# iqn.YYYY-MM.reversed.domain[:unique name] (RFC 3720 3.2.6.3.1), or eui. with 16 hex digits.
_IQN_RE = re.compile(
    r"iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9](?:[A-Za-z0-9.-]{0,200}[A-Za-z0-9])?"
    r"(?::[A-Za-z0-9._:-]{1,200})?|eui\.[0-9A-Fa-f]{16}"
)


class LegUriError(ValueError):
    """Not a leg URI this agent accepts; `str()` says why."""


@dataclass(frozen=True)
class LegUri:
    scheme: str  # "nbd" or "iscsi"
    host: str  # without brackets
    port: int
    export: str  # nbd: the export name; iscsi: the target IQN
    lun: int | None  # iscsi only

    @property
    def name(self) -> str:
        """The source name QEMU/libvirt want: the export, or "IQN/LUN"."""
        return self.export if self.lun is None else f"{self.export}/{self.lun}"


def parse_leg_uri(text: str) -> LegUri:
    """Parse `text` strictly (module docstring); raises LegUriError."""
    if len(text) > MAX_URI_LEN:
        raise LegUriError(f"longer than {MAX_URI_LEN} characters")
    if not text.isprintable() or not text.isascii() or " " in text:
        raise LegUriError("must be printable ASCII without spaces")
    if any(c in text for c in "?#%@"):
        raise LegUriError("no user info, query, fragment or %-escapes allowed")
    m = _URI_RE.fullmatch(text)
    if m is None:
        raise LegUriError("must be nbd://HOST[:PORT]/EXPORT or iscsi://HOST[:PORT]/IQN/LUN")
    scheme, host, port_s, path = m.groups()
    host = _host(host)
    port = int(port_s) if port_s else (NBD_PORT if scheme == "nbd" else ISCSI_PORT)
    if not 1 <= port <= 65535:
        raise LegUriError(f"port {port} is not between 1 and 65535")
    if scheme == "nbd":
        if not _EXPORT_RE.fullmatch(path):
            raise LegUriError(f"NBD export {path!r} must match {_EXPORT_RE.pattern}")
        return LegUri(scheme, host, port, path, None)
    target, _, lun_s = path.rpartition("/")
    if not _IQN_RE.fullmatch(target):
        raise LegUriError(f"iSCSI target {target!r} is not an iqn. or eui. name")
    if not lun_s.isdigit() or len(lun_s) > 5 or int(lun_s) > MAX_LUN:
        raise LegUriError(f"iSCSI LUN {lun_s!r} must be a number from 0 to {MAX_LUN}")
    return LegUri(scheme, host, port, target, int(lun_s))


def _host(host: str) -> str:
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise LegUriError(f"{host!r} is not an IPv6 address") from None
    if not _HOST_RE.fullmatch(host):
        raise LegUriError(f"host {host!r} is not a DNS name or IPv4 address")
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise LegUriError(f"{host!r} is not an IPv4 address") from None
    return host
