"""API access: which token reaches which route, what a config may ask for, the routes the
OpenAPI document lists (tests/integration/test_api_schema.py checks a real agent)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from haagent.api import Handlers, build_app
from haagent.api_access import ApiAccess, Gate, is_loopback_listen
from haagent.config import ConfigError, load_config
from haagent.openapi import OPENAPI_DOCUMENT
from tests.helpers.tls import make_cert

ADMIN, READ = b"admin-token-123456", b"read-token-1234567"

BASE = """
[cluster]
name = "prod"
secret = "0123456789abcdef"

[local]
node = "n1"
data_dir = "state"
libvirt_uri = "qemu:///system"
api_token = "admin-token-123456"
{local}

[nodes.n1]
address = "10.0.0.1:7400"
memory_mib = 4096
fence = "watchdog"

[nodes.n2]
address = "10.0.0.2:7400"
memory_mib = 4096
fence = "watchdog"

[nodes.n3]
address = "10.0.0.3:7400"
role = "witness"
"""


def config(tmp_path: Path, local: str) -> Path:
    path = tmp_path / "n1.toml"
    path.write_text(BASE.format(local=local))
    return path


def test_each_level_takes_the_tokens_it_should() -> None:
    gate = Gate(ApiAccess("admin-token-123456", "read-token-1234567", open_metrics=False))
    cases = [
        ("GET", "/v1/health", None, None),
        ("GET", "/metrics", None, 401),
        ("GET", "/metrics", READ, None),
        ("GET", "/metrics", ADMIN, None),
        ("GET", "/v1/status", None, 401),
        ("GET", "/v1/status", b"wrong-token-wrong", 401),
        ("GET", "/v1/status", READ, None),
        ("GET", "/v1/events", ADMIN, None),
        ("GET", "/v1/no-such-route", None, 401),  # a stranger learns no route names
        ("POST", "/v1/guests/g1/disable", None, 401),
        ("POST", "/v1/guests/g1/disable", READ, 403),
        ("POST", "/v1/guests/g1/disable", ADMIN, None),
        ("DELETE", "/v1/status", READ, 403),
    ]
    for method, path, token, want in cases:
        got = gate.check(method, path, token)
        assert (got and got[0]) == want, (method, path, token, got)


def test_open_reads_and_open_metrics_are_explicit() -> None:
    def status(gate: Gate, method: str, path: str, token: bytes | None) -> int:
        refused = gate.check(method, path, token)
        return 200 if refused is None else refused[0]

    old = Gate(ApiAccess("admin-token-123456"))  # an old config: one token, metrics open
    assert status(old, "GET", "/metrics", None) == 200
    assert status(old, "GET", "/v1/status", None) == 401
    assert status(old, "GET", "/v1/status", ADMIN) == 200
    reads = Gate(ApiAccess("admin-token-123456", open_reads=True, open_metrics=False))
    assert status(reads, "GET", "/v1/status", None) == 200
    assert status(reads, "GET", "/metrics", None) == 200  # open reads include the metrics
    assert status(reads, "POST", "/v1/guests/g1/enable", None) == 401


def test_loopback() -> None:
    assert is_loopback_listen("127.0.0.1:8400") and is_loopback_listen("[::1]:8400")
    assert is_loopback_listen("unix:/run/haagent/api.sock")
    assert not is_loopback_listen("10.0.0.1:8400") and not is_loopback_listen("0.0.0.0:8400")


def test_old_configs_keep_their_meaning(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, 'api_listen = "127.0.0.1:8400"'))
    access = cfg.api_access
    assert access.admin_token == "admin-token-123456" and access.read_token is None
    assert access.open_metrics and not access.open_reads and not access.tls


def test_a_network_listener_needs_tls_or_an_explicit_waiver(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a loopback address.*api_tls_cert_file"):
        load_config(config(tmp_path, 'api_listen = "10.0.0.1:8400"'))
    waived = 'api_listen = "10.0.0.1:8400"\napi_plaintext_ok = true'
    assert load_config(config(tmp_path, waived)).api_access.plaintext_ok
    cert, key = make_cert(tmp_path, "10.0.0.1")
    tls = f'api_listen = "10.0.0.1:8400"\napi_tls_cert_file = "{cert}"\napi_tls_key_file = "{key}"'
    access = load_config(config(tmp_path, tls)).api_access
    assert access.tls and access.tls_cert_file == cert


@pytest.mark.parametrize(
    ("local", "key", "message"),
    [
        ('api_read_token = "admin-token-123456"', "api_read_token", "must differ"),
        ('api_read_token = "short"', "api_read_token", "too short"),
        ('api_tls_cert_file = "/etc/hostname"', "api_tls_key_file", "both"),
        ("api_open_reads = 1", "api_open_reads", "true or false"),
        ('api_tls_cert_file = "{f}"\napi_tls_key_file = "{f}"', "api_tls_cert_file", "cannot load"),
    ],
)
def test_api_mistakes_are_one_clear_line(
    tmp_path: Path, local: str, key: str, message: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    text = 'api_listen = "127.0.0.1:8400"\n' + local.replace("{f}", str(junk))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(config(tmp_path, text))
    assert err.value.key == f"local.{key}"


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = build_app(ApiAccess("admin-token-123456"), cast(Handlers, object()))
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {
        (method, path) for path, ops in OPENAPI_DOCUMENT["paths"].items() for method in ops
    }
    assert routes == documented
