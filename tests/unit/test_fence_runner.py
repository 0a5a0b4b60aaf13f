"""The fence-agent runner and fencing levels, against the stock `fence_dummy` executable.

Where a behaviour no stock agent shows on demand (hanging forever with a child process,
claiming success while the target stays on), a tiny shell-script agent in tmp_path plays that
device; it speaks the same stdin protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haagent.fencing.agent_runner import (
    AgentResult,
    AgentRunner,
    PowerState,
    resolve_agent,
    stdin_payload,
)
from haagent.fencing.levels import AgentFencer
from haagent.ports import FenceDevice

SECRET = "hunter2-Sup3rSecret"


def _require_agent(name: str) -> str:
    path = resolve_agent(name)
    assert path is not None, f"{name} is missing: install the Debian package fence-agents"
    return path


@pytest.fixture(autouse=True)
def _fence_agents_installed() -> None:
    _require_agent("fence_dummy")


def _status_file(path: Path, content: str = "on") -> Path:
    # fence_dummy needs exactly "on"/"off": a trailing newline makes its status unknown.
    path.write_text(content)
    return path


def _dummy(name: str, status_file: Path, **extra: str) -> FenceDevice:
    params = {"type": "file", "status_file": str(status_file), **extra}
    return FenceDevice(name=name, agent="fence_dummy", params=params)


def _failing_dummy(name: str) -> FenceDevice:
    # type=fail never powers anything off; power_timeout=1 makes it give up after 1 s.
    params = {"type": "fail", "power_timeout": "1"}
    return FenceDevice(name=name, agent="fence_dummy", params=params)


def _script_agent(path: Path, body: str) -> Path:
    """A shell-script fence agent: `action` holds the requested action."""
    path.write_text(
        "#!/bin/sh\n"
        "action=\n"
        "while IFS= read -r line; do case $line in action=*) action=${line#action=};; esac;"
        " done\n" + body
    )
    path.chmod(0o755)
    return path


def _run(runner: AgentRunner, device: FenceDevice, action: str, timeout_s: float) -> AgentResult:
    return asyncio.run(runner.run(device.agent, action, device.params, timeout_s))


def _gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie waiting for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _read_pid(path: Path) -> int:
    assert _wait_until(lambda: path.exists() and path.read_text().strip() != ""), path
    return int(path.read_text())


# --- runner ----------------------------------------------------------------------------------


def test_fence_dummy_off_then_status_reports_off(tmp_path: Path) -> None:
    status = _status_file(tmp_path / "status")
    device = _dummy("dummy", status)
    runner = AgentRunner()

    before = _run(runner, device, "status", 10)
    assert before.exit_code == 0
    assert before.power is PowerState.ON

    off = _run(runner, device, "off", 10)
    assert off.succeeded, off.reason()
    assert off.exit_code == 0
    assert not off.timed_out
    assert off.duration_s > 0
    assert "Powered OFF" in off.stdout_tail
    assert status.read_text() == "off"

    after = _run(runner, device, "status", 10)
    assert after.exit_code == 2
    assert after.power is PowerState.OFF
    assert not after.succeeded  # for status, exit 2 is an answer, not a success


def test_payload_is_one_key_value_line_each() -> None:
    payload = stdin_payload("off", {"ip": "10.0.0.1", "lanplus": "1"})
    assert payload == b"action=off\nip=10.0.0.1\nlanplus=1\n"


def test_missing_agent_is_reported_not_raised() -> None:
    result = asyncio.run(AgentRunner().run("fence_does_not_exist", "off", {}, 5))
    assert not result.succeeded
    assert result.exit_code is None
    assert result.power is PowerState.UNKNOWN
    assert "fence_does_not_exist" in result.reason()
    assert "not found" in result.reason()


def test_unreadable_status_counts_as_failure(tmp_path: Path) -> None:
    # With a newline after "on", fence_dummy cannot tell the power state: off fails (exit 1).
    device = _dummy("garbled", _status_file(tmp_path / "status", "on\n"))
    off = _run(AgentRunner(), device, "off", 10)
    assert off.exit_code == 1
    assert not off.succeeded
    assert "Unable to obtain correct plug status" in off.reason()
    status = _run(AgentRunner(), device, "status", 10)
    assert status.power is PowerState.UNKNOWN


def test_fence_dummy_calls_a_missing_status_file_off(tmp_path: Path) -> None:
    """A quirk to know about, pinned here: fence_dummy treats an unreadable status file as
    "off", so a status file in a missing directory is NOT a failing device. Its status says
    OFF and its off "succeeds" ("Already OFF"); confirmation cannot catch an agent that lies,
    which is why devices must be checked against reality when they are configured."""
    device = _dummy("misconfigured", tmp_path / "no-such-dir" / "status")
    status = _run(AgentRunner(), device, "status", 10)
    assert status.power is PowerState.OFF
    off = _run(AgentRunner(), device, "off", 10)
    assert off.succeeded
    assert "Already OFF" in off.stdout_tail


def test_timeout_kills_the_agent_and_its_children(tmp_path: Path) -> None:
    agent = _script_agent(
        tmp_path / "fence_hang",
        f"echo $$ > {tmp_path}/agent.pid\nsleep 600 &\necho $! > {tmp_path}/child.pid\nwait\n",
    )
    started = time.monotonic()
    result = asyncio.run(AgentRunner().run(str(agent), "off", {}, 0.5))
    elapsed_s = time.monotonic() - started

    assert result.timed_out
    assert not result.succeeded
    assert "timed out" in result.reason()
    assert elapsed_s < 3.0
    agent_pid = _read_pid(tmp_path / "agent.pid")
    child_pid = _read_pid(tmp_path / "child.pid")
    # The agent was our child and has been reaped: it is gone from /proc entirely.
    assert not Path(f"/proc/{agent_pid}").exists()
    # Its child was killed with the group; as an orphan it may linger briefly as a zombie.
    assert _wait_until(lambda: _gone(child_pid)), f"child {child_pid} survived the timeout"


def test_timeout_with_the_real_fence_dummy(tmp_path: Path) -> None:
    # random_sleep_range=5 sleeps 1..5 s before acting, longer than the 0.3 s allowed.
    status = _status_file(tmp_path / "status")
    device = _dummy("slow", status, random_sleep_range="5")
    result = _run(AgentRunner(), device, "off", 0.3)
    assert result.timed_out
    assert result.exit_code == -9
    assert status.read_text() == "on"


def test_cancelling_the_caller_kills_the_agent(tmp_path: Path) -> None:
    agent = _script_agent(tmp_path / "fence_hang", f"echo $$ > {tmp_path}/agent.pid\nsleep 600\n")

    async def scenario() -> None:
        task = asyncio.create_task(AgentRunner().run(str(agent), "off", {}, 60))
        await asyncio.to_thread(_read_pid, tmp_path / "agent.pid")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    agent_pid = _read_pid(tmp_path / "agent.pid")
    assert not Path(f"/proc/{agent_pid}").exists()


def test_invalid_parameter_values_are_refused(tmp_path: Path) -> None:
    injected = {"status_file": str(tmp_path / "s"), "password": f"{SECRET}\naction=on"}
    result = asyncio.run(AgentRunner().run("fence_dummy", "off", injected, 5))
    assert result.exit_code is None
    assert "line break" in result.reason()
    assert SECRET not in result.reason()


# --- levels ----------------------------------------------------------------------------------


def test_fencer_fences_with_one_level(tmp_path: Path) -> None:
    status = _status_file(tmp_path / "status")
    outcome = asyncio.run(AgentFencer().fence("node3", [[_dummy("dummy", status)]], timeout_s=20))
    assert outcome.ok, outcome.detail
    assert outcome.level == 1
    assert outcome.duration_s > 0
    assert "node3" in outcome.detail
    assert "status OFF" in outcome.detail
    assert status.read_text() == "off"


def test_all_levels_failing_gives_a_detail_per_level(tmp_path: Path) -> None:
    levels = [
        [_dummy("garbled", _status_file(tmp_path / "status", "on\n"))],
        [FenceDevice(name="gone", agent="fence_does_not_exist", params={})],
    ]
    outcome = asyncio.run(AgentFencer().fence("node3", levels, timeout_s=20))
    assert not outcome.ok
    assert outcome.level is None
    assert "level 1: garbled (fence_dummy) off failed: exit 1" in outcome.detail
    assert "level 2: gone (fence_does_not_exist) off failed" in outcome.detail
    assert "not found" in outcome.detail


def test_level_one_failing_escalates_to_level_two(tmp_path: Path) -> None:
    first = _status_file(tmp_path / "first")
    second = _status_file(tmp_path / "second")
    levels = [
        # Every device of a level must succeed: one good device is not enough.
        [_dummy("pdu-a", first), _failing_dummy("pdu-b")],
        [_dummy("bmc", second)],
    ]
    outcome = asyncio.run(AgentFencer().fence("node3", levels, timeout_s=20))
    assert outcome.ok, outcome.detail
    assert outcome.level == 2
    assert "pdu-b (fence_dummy) off failed" in outcome.detail
    assert "Timed out waiting to power OFF" in outcome.detail
    assert second.read_text() == "off"


def test_off_without_confirmed_status_is_a_failure(tmp_path: Path) -> None:
    # A device that reports success for off but whose status still says ON.
    liar = _script_agent(
        tmp_path / "fence_liar",
        'case $action in off) echo "Success: Powered OFF"; exit 0;;'
        ' status) echo "Status: ON"; exit 0;; esac\nexit 1\n',
    )
    device = FenceDevice(name="liar", agent=str(liar), params={})
    outcome = asyncio.run(AgentFencer().fence("node3", [[device]], timeout_s=10))
    assert not outcome.ok
    assert "status still reports ON" in outcome.detail


def test_no_levels_and_empty_levels_never_succeed() -> None:
    none = asyncio.run(AgentFencer().fence("node3", [], timeout_s=5))
    assert not none.ok
    assert "no fencing levels" in none.detail
    empty = asyncio.run(AgentFencer().fence("node3", [[]], timeout_s=5))
    assert not empty.ok
    assert "no devices" in empty.detail


def test_timeout_bounds_the_whole_call(tmp_path: Path) -> None:
    hang = _script_agent(tmp_path / "fence_hang", "sleep 600\n")
    status = _status_file(tmp_path / "status")
    levels = [
        [FenceDevice(name="hang", agent=str(hang), params={})],
        [_dummy("never-reached", status)],
    ]
    started = time.monotonic()
    outcome = asyncio.run(AgentFencer().fence("node3", levels, timeout_s=0.5))
    assert time.monotonic() - started < 3.0
    assert not outcome.ok
    assert "timed out" in outcome.detail
    assert "not tried" in outcome.detail
    assert status.read_text() == "on"


def test_passwords_never_reach_details_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # fence_dummy does not know `password`/`passwd`; it echoes the whole line in a warning.
    garbled = _dummy(
        "garbled",
        _status_file(tmp_path / "status", "on\n"),
        password=SECRET,
        passwd=SECRET + "2",
    )
    # An agent that prints everything it was given, then fails.
    echo = tmp_path / "fence_echo"
    echo.write_text("#!/bin/sh\ncat >&2\nexit 1\n")
    echo.chmod(0o755)
    echoing = FenceDevice(
        name="echo",
        agent=str(echo),
        params={"login": "admin", "password": SECRET},
    )
    result = _run(AgentRunner(), garbled, "off", 10)
    assert "Ignoring unknown option 'password=***'" in result.stderr_tail
    outcome = asyncio.run(AgentFencer().fence("node3", [[garbled], [echoing]], timeout_s=20))
    assert not outcome.ok
    for text in (outcome.detail, result.stderr_tail, result.stdout_tail, caplog.text):
        assert SECRET not in text
    assert "***" in caplog.text  # the parameters were logged, redacted


def test_a_stock_agent_works_when_the_daemon_runs_with_its_checkout_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock agents `from fencing import ...` (their library in /usr/share/fence); this
    repository's top-level `fencing/` on the daemon's PYTHONPATH shadowed it and every agent
    failed with an ImportError."""
    checkout = Path(__file__).resolve().parents[2]
    assert (checkout / "fencing" / "__init__.py").is_file()
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    device = _dummy("d1", _status_file(tmp_path / "power", "on"))
    result = _run(AgentRunner(), device, "status", 20)
    assert result.succeeded, result.stderr_tail
    assert "ImportError" not in result.stderr_tail


def test_agent_environment_silences_python_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dump = tmp_path / "env"
    agent = _script_agent(tmp_path / "fence_env", f"env > {env_dump}\nexit 0\n")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/should-not-leak")
    result = asyncio.run(AgentRunner().run(str(agent), "monitor", {}, 5))
    assert result.succeeded
    lines = env_dump.read_text().splitlines()
    assert "PYTHONWARNINGS=ignore" in lines
    assert not any(line.startswith("NOTIFY_SOCKET=") for line in lines)
    path_line = next(line for line in lines if line.startswith("PATH="))
    assert "/usr/sbin" in path_line.split("=", 1)[1].split(":")
