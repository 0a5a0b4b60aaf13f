"""Whatever an agent answers, the CLI prints it or fails in one line: never a traceback.

A fake agent (tests/helpers/fake_agent.py) answers Hypothesis-made bodies: mutations of a real
status, what-if and outcome document (values replaced, keys dropped, types changed), any JSON,
deeply nested JSON, non-JSON bytes, with any HTTP status. `haagent status [--json]`,
`simulate --fail` (which asks the agent first) and `guest enable` / `node maintenance` run
in this process through `cli.main`; each must return 0 or 1 (an operation that failed), and
on 1 print exactly one printable line on stderr. Seed fixed in CI; HAAGENT_FUZZ_SCALE=10 for
more.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haagent import cli
from tests.helpers.fake_agent import FakeAgent, fake_agent

SCALE = int(os.environ.get("HAAGENT_FUZZ_SCALE", "1"))
CASES = 600 * SCALE
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "local-3node"
TOKEN = "token-token-token"

STATUS = {
    "cluster": "local-demo",
    "node": "n1",
    "pid": 123,
    "incarnation": "123-abc",
    "leader": "n1",
    "term": 3,
    "quorum": True,
    "lease_remaining_s": 0.8,
    "loop_age_s": 0.01,
    "incompatible": None,
    "nodes": {
        "n1": {
            "state": "up",
            "maintenance": False,
            "role": "hypervisor",
            "since_heartbeat_s": 0.05,
            "failure": None,
            "fence": {"attempts": 0, "last_result": None},
            "reason": "joined",
        },
        "n2": {
            "state": "fenced",
            "maintenance": False,
            "role": "hypervisor",
            "since_heartbeat_s": None,
            "failure": {"by": "n1", "silence_s": 2.0},
            "fence": {"attempts": 1, "last_result": "ok"},
            "reason": "fenced by bmc-n2",
        },
    },
    "guests": {
        "web1": {
            "owner": "n1",
            "generation": 4,
            "desired": "running",
            "state": "running",
            "failures": 0,
            "failed_nodes": [],
            "last_transition": {"at": 1.0, "reason": "started"},
        }
    },
    "local": {"web1": {"running": True, "owner": "n1", "generation": 4}},
    "local_error": None,
}
WHATIF = {
    "fail": ["n1"],
    "moves": {"web1": {"from": "n1", "to": "n3"}},
    "unplaced": {"db1": "no room"},
    "quorum_kept": True,
    "tolerated_node_failures": 1,
    "tolerated_detail": "limited by the Raft majority (3 voters)",
    "view_fresh": True,
}
OUTCOME = {"outcome": "refused", "detail": "no such guest"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 3)) == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@st.composite
def answers(draw: st.DrawFn) -> tuple[int, bytes]:
    status = draw(st.sampled_from([200, 200, 200, 401, 404, 409, 500, 503]))
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        doc = draw(mutated(draw(st.sampled_from([STATUS, WHATIF, OUTCOME]))))
        return status, json.dumps(doc).encode()
    if kind == 6:
        return status, json.dumps(draw(json_values)).encode()
    if kind == 7:
        return status, b"[" * draw(st.sampled_from([40, 5000, 20_000]))
    if kind == 8:
        return status, draw(st.binary(max_size=40))
    return status, draw(
        st.sampled_from(
            [b"", b"NaN", b'{"a": Infinity}', b'{"error": "\x1b[2J"}', b"\xef\xbb\xbf{}"]
        )
    )


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def agent() -> Iterator[FakeAgent]:
    with fake_agent() as a:
        yield a


def test_any_answer_is_printed_or_one_line(agent: FakeAgent, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "ex")
    config = tmp_path / "ex" / "n1.toml"
    listen = agent.url.removeprefix("http://")
    config.write_text(config.read_text().replace("127.0.0.1:8401", listen))
    remote = ["--url", agent.url, "--token", TOKEN]
    commands = [
        ["status", *remote],
        ["status", "--json", *remote],
        ["simulate", "--config", str(config), "--fail", "n1"],
        ["simulate", "--config", str(config), "--fail", "n1", "--json"],
        ["guest", "enable", "web1", *remote],
        ["node", "maintenance", "n1", "on", *remote],
    ]
    codes: dict[int, int] = {}

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(answers(), st.sampled_from(commands))
    def case(answer: tuple[int, bytes], argv: list[str]) -> None:
        agent.status, agent.body = answer
        code, out, err = run_cli(argv)
        codes[code] = codes.get(code, 0) + 1
        assert code in (0, 1), (code, err)
        assert all(line.isprintable() for line in out.splitlines()), out
        if code == 1:
            assert err.count("\n") == 1 and err.startswith("haagent: "), err
            assert err.rstrip("\n").isprintable(), err
        elif argv[0] == "simulate":
            # Asked the agent and either used its answer or fell back to the config, saying so.
            assert err == "" or (err.count("\n") == 1 and "computing from the config" in err)
        else:
            assert err == "", err

    # The unmutated documents are understood (so the mutations start from sense).
    for doc, argv, expected in ((STATUS, commands[0], 0), (WHATIF, commands[2], 0)):
        agent.status, agent.body = 200, json.dumps(doc).encode()
        assert run_cli(argv)[::2] == (expected, "")
    case()
    assert codes.get(0, 0) > CASES // 20 and codes.get(1, 0) > CASES // 5, codes
