"""What a user (or a strange agent) can cause never ends in a traceback: the real `haagent`
executable answers with one line and the right exit status (2 usage/config, 1 failed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fake_agent import fake_agent

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "local-3node"
TOKEN = "token-token-token"


def haagent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def one_line(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("haagent"), proc.stderr
    assert lines[0].isprintable()
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# A few through the real executable; tests/unit/test_cli_fuzz.py sends thousands in-process.
STRANGE_ANSWERS = [
    b"[]",
    b'{"cluster": "c", "node": "n1", "pid": 1, "leader": null, "term": 1, "quorum": true,'
    b' "lease_remaining_s": "soon", "nodes": [], "guests": 7}',
    b"[" * 100_000,
    b"\xff\xfe\x00",
]


@pytest.mark.parametrize("body", STRANGE_ANSWERS, ids=range(len(STRANGE_ANSWERS)))
def test_status_and_whatif_on_a_strange_answer_fail_in_one_line(
    tmp_path: Path, body: bytes
) -> None:
    with fake_agent() as agent:
        agent.body = body
        one_line(haagent("status", "--url", agent.url, "--token", TOKEN), 1, agent.url)
        # The what-if asks the agent named in the config, then falls back to the config.
        shutil.copytree(EXAMPLE, tmp_path / "ex")
        config = tmp_path / "ex" / "n1.toml"
        listen = agent.url.removeprefix("http://")
        config.write_text(config.read_text().replace("127.0.0.1:8401", listen))
        proc = haagent("simulate", "--config", str(config), "--fail", "n1")
        if proc.returncode == 0:  # an answer that is no document: computed from the config
            one_line(proc, 0, "computing from the config instead")
        else:  # a JSON object of the wrong shape
            one_line(proc, 1, "what-if document", "cannot read")


def test_a_whatif_document_of_the_wrong_shape_fails_in_one_line(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "ex")
    config = tmp_path / "ex" / "n1.toml"
    with fake_agent() as agent:
        agent.body = json.dumps({"fail": 3, "moves": [], "quorum_kept": True}).encode()
        listen = agent.url.removeprefix("http://")
        config.write_text(config.read_text().replace("127.0.0.1:8401", listen))
        proc = haagent("simulate", "--config", str(config), "--fail", "n1")
        one_line(proc, 1, "what-if document", "cannot read")


def test_a_binary_scenario_is_a_usage_error(tmp_path: Path) -> None:
    scenario = tmp_path / "bin.scn"
    scenario.write_bytes(bytes(range(256)) * 4)
    one_line(haagent("simulate", "--scenario", str(scenario)), 2, "not UTF-8")
    one_line(haagent("simulate", "--scenario", "/dev/zero"), 2, "not a regular file")


def test_local_up_with_an_invalid_example_starts_nothing(tmp_path: Path) -> None:
    example = tmp_path / "ex"
    shutil.copytree(EXAMPLE, example)
    n2 = example / "n2.toml"
    n2.write_text(n2.read_text().replace("lease_s = 1.0", "lease_s = inf"))
    run_dir = tmp_path / "run"
    proc = haagent("local", "up", "--dir", str(run_dir), "--example", str(example))
    one_line(proc, 2, "invalid config", "n2.toml: timing.lease_s: must be a finite number")
    assert not run_dir.exists()


def test_local_down_on_something_that_is_no_run_folder(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    for target in (regular, tmp_path):
        proc = haagent("local", "down", "--dir", str(target))
        line = one_line(proc, 1, "not a run folder")
        assert "stopped" not in proc.stdout + line


def test_run_with_an_unreachable_libvirt_is_one_line(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "ex")
    config = tmp_path / "ex" / "n1.toml"
    text = config.read_text().replace("test:///default", "qemu+tcp://127.0.0.1:1/system")
    config.write_text(text)
    one_line(haagent("run", "--config", str(config)), 1, "cannot start", "127.0.0.1:1")
    assert not (tmp_path / "ex" / "state").exists()  # nothing was armed or written


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('fence = [["bmc-n1"]]', 'fence = [["bmc-n1"]]\nwatchdog_timeout_s = nan', "finite"),
        ('fence = [["bmc-n1"]]', 'fence = [["bmc-n1"]]\nwatchdog_timeout_s = -inf', "finite"),
        ('fence = [["bmc-n1"]]', 'fence = [["bmc-n1"]]\nwatchdog_timeout_s = 1e12', "and 3600"),
        ('"127.0.0.1:8401"', '"unix:/tmp/a\\u0000b.sock"', "control characters"),
        ('"127.0.0.1:8401"', '"unix:/tmp/' + "s" * 120 + '"', "at most 107 bytes"),
    ],
    ids=["nan-watchdog", "inf-watchdog", "huge-watchdog", "nul-socket", "long-socket"],
)
def test_run_refuses_bad_watchdog_and_socket_values_in_one_line(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "ex")
    config = tmp_path / "ex" / "n1.toml"
    config.write_text(config.read_text().replace(old, new, 1))
    one_line(haagent("run", "--config", str(config)), 2, "invalid config", fragment)


def test_bad_agent_arguments_are_usage_errors() -> None:
    one_line(haagent("status", "--url", "http://127.0.0.1:1", "--token", "tök-tök-tök"), 2)
    one_line(haagent("status", "--url", "ftp://x", "--token", TOKEN), 2, "--url")
    one_line(
        haagent("guest", "enable", "a/b?c", "--url", "http://127.0.0.1:1", "--token", TOKEN), 1
    )
