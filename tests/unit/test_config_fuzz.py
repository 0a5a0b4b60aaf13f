"""Mutated copies of the shipped example configs: each is valid, or a clear error.

The contract (issue 13), for `haagent check-config FILE` on anything a file can hold:

* exit 0 and one "FILE: ok (...)" line on stdout, and the loaded config obeys the rules a
  valid config must (finite timings, exact cross-field rules, full-name matches, visible
  ASCII secrets, one canonical Raft address per node, fence params the runner accepts); or
* exit 2 and exactly one line on stderr, `haagent: invalid config: FILE: [KEY: ]...`, with
  every character printable;
* never an exception out of `main` (a traceback), never a hang (a per-case alarm).

The CLI runs in this process (thousands of subprocesses would take minutes); the real
executable is checked on the named hostile inputs in test_config.py. Hypothesis runs with a
fixed seed in CI (`derandomize`), so a failure is reproducible; HAAGENT_FUZZ_SCALE=10 runs ten
times as many random cases locally.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import re
import shutil
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haagent import cli
from haagent.config import DRBD_RESOURCE_RE, NAME_RE, SECRET_RE, Config, load_config
from haagent.config_guests import LEG_ID_RE
from haagent.fencing.agent_runner import validate_params
from haagent.leguri import parse_leg_uri
from haagent.model import GuestSpec, NodeRole, Raid1RunOn, StorageKind
from haagent.timing import ELECTION_SLACK_S
from haagent.untrusted import escape

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "config" / "examples" / "local-3node"
DRBD_EXAMPLE_DIR = EXAMPLE_DIR.parent / "drbd-2hv"  # storage = "drbd", a witness
RAID1_EXAMPLE_DIR = EXAMPLE_DIR.parent / "raid1-2hv"  # storage = "raid1": legs in a list
EXAMPLES = {
    p.name: tomllib.loads(p.read_text())
    for d in (EXAMPLE_DIR, DRBD_EXAMPLE_DIR, RAID1_EXAMPLE_DIR)
    for p in sorted(d.glob("*.toml"))
}
SCALE = int(os.environ.get("HAAGENT_FUZZ_SCALE", "1"))
CASES = 2000 * SCALE
ALARM_S = 5.0


@dataclass(frozen=True)
class Raw:
    """TOML text to emit as is (what a dict cannot express, e.g. 1,000 nested arrays)."""

    text: str


# --- a TOML writer good enough for any mutation -----------------------------------------------


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{toml_string(key)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{toml_string(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# --- hostile values -----------------------------------------------------------------------------

SPECIAL_FILES = ("fifo", "not-utf8", "binary", "a-directory", "big", "unicode-secret")


def hostile_strings(files: dict[str, str]) -> st.SearchStrategy[str]:
    fixed = [
        *sorted(files.values()),
        "",
        " ",
        "\n",
        "n1\n",
        "n1 ",
        "\x00",
        "a\x00b",
        "web1\n",
        "local-demo\n",
        "127.0.0.1:\u0667\u0664\u0660\u0661",  # Arabic-Indic digits
        "127.0.0.1:\u00b2",  # a superscript two: isdigit() but not int()
        "127.0.0.1:7401\n",
        "127.0.0.1:07401",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999999999999999999",
        "127.0.0.1:-1",
        ":7401",
        "127.0.0.1",
        "localhost:7401",
        "127.1:7401",
        "127.000.000.001:7401",
        "[::1]:7401",
        "[0:0::1]:7401",
        "[::ffff:127.0.0.1]:7401",
        "[::ffff:127.0.0.1]:7402",
        "0.0.0.0:7401",
        "[::]:7401",
        "224.0.0.1:7401",
        "127.0.0.1:7402",
        "127.0.0.1:7403",
        "unix:",
        "unix:relative.sock",
        "unix:/tmp/a\x00b.sock",
        "unix:/" + "s" * 200,
        "/dev/zero",
        "/dev/null",
        "/dev/stdin",
        "/dev/urandom",
        "/proc/self/mem",
        "/",
        ".",
        "/" + "x" * 5000,
        "x" * 5000,
        "a/" * 3000,
        "é" * 300,
        "token-with-é-inside",
        "token with blanks",
        "\u2028",
        "\x7f",
        "\x1b[31m",
        "fence_ipmilan\n",
        "fence_../../bin/sh",
        "/usr/sbin/fence_dummy",
        "relative/fence",
        "qemu:///system\n",
        "nan",
        "inf",
        "watchdog",
        "witness",
        "hypervisor",
        "drbd",
        "shared",
        "web1",
        "r0",
        "-r0",
        "r0;reboot",
        "hv1",
        "hv2",
        "/run/haagent/drbd-fence.sock",
        "/run/" + "s" * 120,
        "relative.sock",
        "debug",
        "bmc-n1",
        "n2",
        "n3",
    ]
    return st.one_of(st.sampled_from(fixed), st.text(max_size=40))


def hostile_values(files: dict[str, str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.sampled_from(
            [
                math.nan,
                math.inf,
                -math.inf,
                -0.0,
                0,
                -1,
                1,
                3,
                2**31,
                2**63 - 1,
                -(2**63),
                10**30,
                1e300,
                5e-324,
                0.7,
                0.2,
                0.9,
                0.1,
                0.3,
                0.30000000000000004,
                True,
                False,
                Raw("[" * 1000 + "]" * 1000),
                Raw("[" * 200 + "]" * 200),
                Raw("{a = " * 300 + "1" + "}" * 300),
                datetime.datetime(2026, 12, 4, 15, 0),
                datetime.date(2026, 1, 1),
                [],
                {},
                [["bmc-n1"], []],
                [["nope"]],
                [[1]],
                ["n1", "n1"],
                ["n4"],
                ["hv1", "hv2"],
                ["hv1", "witness"],
                ["hv1", "hv2", "hv1"],
            ]
        ),
        hostile_strings(files),
        st.integers(),
        st.floats(),
        st.floats(min_value=0.001, max_value=100),
        st.integers(-5, 100),
        st.booleans(),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.dictionaries(hostile_strings(files), scalars, max_size=2),
    )


def paths_of(
    doc: dict[str, Any], prefix: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """Every key's path; into tables, and into the tables of a list (a raid1 guest's legs:
    such a path holds the list index, and its last item is always a key)."""
    for key, value in doc.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from paths_of(value, (*prefix, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from paths_of(item, (*prefix, key, i))


def parent_of(doc: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    return cast(dict[str, Any], node)


@st.composite
def mutated_configs(draw: st.DrawFn, files: dict[str, str]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    doc = tomllib.loads(to_toml(EXAMPLES[name]))  # a deep copy
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = list(paths_of(doc))
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add", "rename"]))
        if op == "add" or not paths:
            tables = [p for p in paths if isinstance(parent_of(doc, p)[p[-1]], dict)]
            where = draw(st.sampled_from([(), *tables]))
            target = parent_of(doc, (*where, "x"))
            key = draw(st.one_of(hostile_strings(files), st.sampled_from(["lease_s", "x"])))
            target[key] = draw(hostile_values(files))
            continue
        leaves = [p for p in paths if not isinstance(parent_of(doc, p)[p[-1]], dict)]
        # Mostly values, sometimes whole tables: a broken table stops the check early.
        path = draw(st.sampled_from(leaves if leaves and draw(st.integers(0, 6)) else paths))
        parent = parent_of(doc, path)
        if op == "set":
            parent[path[-1]] = draw(hostile_values(files))
        elif op == "delete":
            del parent[path[-1]]
        else:
            new = draw(hostile_strings(files))
            parent[new] = parent.pop(path[-1])
    data = to_toml(doc).encode()
    if draw(st.integers(0, 11)) == 0:
        # Byte-level damage: what an editor, a bad copy or a hostile hand could leave.
        pos = draw(st.integers(0, len(data)))
        junk = draw(
            st.one_of(
                st.binary(max_size=8),
                st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\r", b"\xef\xbb\xbf", b"\\u"]),
            )
        )
        cut = draw(st.integers(0, 4))
        data = data[:pos] + junk + data[pos + cut :]
    return name, data


# --- the oracle ---------------------------------------------------------------------------------


def check_valid(cfg: Config) -> None:
    """What any config that loads must satisfy (beyond not crashing)."""
    t = cfg.timing
    for name in t.__dataclass_fields__:
        value = getattr(t, name)
        assert math.isfinite(value) and value >= 0.001, name
    x = {name: Decimal(repr(getattr(t, name))) for name in t.__dataclass_fields__}
    assert x["lease_s"] >= 3 * x["heartbeat_s"]
    assert x["failure_timeout_s"] > x["lease_s"] + x["stop_grace_s"]
    assert x["election_timeout_min_s"] < x["election_timeout_max_s"]
    slack = Decimal(repr(ELECTION_SLACK_S))
    assert x["election_timeout_max_s"] + slack <= x["lease_s"] - x["heartbeat_s"]
    assert math.isfinite(cfg.failure_reset_s)
    for name in (cfg.cluster, *cfg.nodes, *cfg.guests, *cfg.fence_devices):
        assert NAME_RE.fullmatch(name), name
    assert SECRET_RE.fullmatch(cfg.secret) and SECRET_RE.fullmatch(cfg.api_token)
    canonical = set()
    for node in cfg.nodes.values():
        assert math.isfinite(node.watchdog_timeout_s)
        host, _, port = node.address.rpartition(":")
        assert re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536
        canonical.add((host, int(port)))
    assert len(canonical) == len(cfg.nodes)
    for device in cfg.fence_devices.values():
        assert validate_params("off", device.params) is None
    resources = set()
    legs: set[str] = set()
    for guest, gc in cfg.guests.items():
        cfg.guest_xml(guest)  # readable within the limits
        spec = gc.spec
        if spec.storage is StorageKind.DRBD:
            # Two hypervisors hold it, a name the wrapper accepts, one guest per resource.
            assert len(set(spec.replica_nodes)) == len(spec.replica_nodes) == 2
            assert all(cfg.nodes[n].role is NodeRole.HYPERVISOR for n in spec.replica_nodes)
            assert DRBD_RESOURCE_RE.fullmatch(spec.resource), spec.resource
            assert set(spec.preferred_nodes) | set(spec.allowed_nodes) <= set(spec.replica_nodes)
            assert spec.resource not in resources
            resources.add(spec.resource)
        elif spec.storage is StorageKind.RAID1:
            check_raid1(cfg, gc.spec, gc.xml_path is not None, legs)
        else:
            assert spec.storage is StorageKind.SHARED and not spec.resource
            assert not spec.replica_nodes and not spec.legs
    sock = str(cfg.drbd_fence_socket)
    assert sock.startswith("/") and len(sock.encode()) <= 107 and sock.isprintable()
    if cfg.api_listen.startswith("unix:"):
        assert "\x00" not in cfg.api_listen


def check_raid1(cfg: Config, spec: GuestSpec, has_xml: bool, disks: set[str]) -> None:
    """Two legs held by two hypervisors, ids the guest can tell apart, sources QEMU reads
    as parsed here, and each leg's disk serving this guest alone (never two writers)."""
    assert has_xml and len(spec.legs) == 2 and not spec.replica_nodes
    a, b = spec.legs
    assert a.id != b.id and a.holder != b.holder and a.remote != b.remote
    for leg in spec.legs:
        assert cfg.nodes[leg.holder].role is NodeRole.HYPERVISOR
        assert LEG_ID_RE.fullmatch(leg.id), leg.id
        assert leg.local.startswith("/") and leg.local.isprintable(), leg.local
        parse_leg_uri(leg.remote)
        for disk in (f"{leg.holder}:{leg.local}", leg.remote):
            assert disk not in disks, disk
            disks.add(disk)
    if spec.raid1_run_on is Raid1RunOn.HOLDERS:
        assert set(spec.preferred_nodes) | set(spec.allowed_nodes) <= set(spec.leg_holders)


class HangError(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise HangError(f"check-config did not return within {ALARM_S}s")


def run_check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check-config", str(path)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("config-fuzz")
    shutil.copytree(EXAMPLE_DIR / "guests", root / "guests")
    shutil.copytree(RAID1_EXAMPLE_DIR / "guests", root / "guests", dirs_exist_ok=True)
    os.mkfifo(root / "fifo")
    (root / "not-utf8").write_bytes(b"secret-\xff\xfe-secret-secret\n")
    (root / "binary").write_bytes(bytes(range(256)))
    (root / "a-directory").mkdir()
    (root / "big").write_bytes(b"x" * (2 * 1024 * 1024))
    (root / "unicode-secret").write_text("sécret-sécret-sécret\n")
    files = {name: str(root / name) for name in SPECIAL_FILES}
    files.update({f"rel-{n}": n for n in SPECIAL_FILES})
    return root, files


SEEN: dict[str, int] = {"valid": 0, "invalid": 0}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_mutated_config_is_valid_or_one_clear_line(
    workdir: tuple[Path, dict[str, str]],
) -> None:
    root, files = workdir
    counter = iter(range(10**9))

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated_configs(files))
    def case(example: tuple[str, bytes]) -> None:
        name, data = example
        path = root / f"{next(counter) % 50}-{name}"
        path.write_bytes(data)
        code, out, err = run_check(path)
        if code == 0:
            assert err == "" and out == f"{path}: ok" + out[len(f"{path}: ok") :]
            assert out.count("\n") == 1
            check_valid(load_config(path))
            SEEN["valid"] += 1
            return
        assert code == 2, (code, out, err)
        assert out == ""
        assert err.endswith("\n") and err.count("\n") == 1, err
        line = err[:-1]
        assert line.startswith(f"haagent: invalid config: {escape(str(path))}: "), line
        assert line.isprintable(), line
        SEEN["invalid"] += 1

    case()
    # Both outcomes must be exercised, or the mutations have drifted off the examples.
    assert SEEN["valid"] > CASES // 50 and SEEN["invalid"] > CASES // 2, SEEN
