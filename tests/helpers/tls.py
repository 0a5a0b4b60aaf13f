"""A self-signed certificate for an agent's API, made with the real openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(folder: Path, ip: str = "127.0.0.1", name: str = "api") -> tuple[Path, Path]:
    """(certificate, key) in `folder`: an EC P-256 self-signed certificate for `ip` (as an IP
    subjectAltName, which is what a client checks when it connects to an address)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", f"/CN={ip}", "-addext", f"subjectAltName=IP:{ip}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key
