"""DrbdWatcher and run_wrapper against real subprocesses.

The restart test uses FAKE_EVENTS2, a fake events2 emitter (a shell script named as one): it
replays real captured 8.4 lines (tests/fixtures/drbd) and dies on purpose, which real DRBD
cannot be made to do on cue. What the lines mean is tested against real output in
test_drbd_events.py, and the real wrapper runs against real DRBD in
tests/integration/test_real_drbd.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from haagent.ports import DiskState, ReplicaRole
from haagent.resources.drbd import (
    WRAPPER,
    DrbdError,
    DrbdReplicas,
    DrbdUnavailableError,
    DrbdWatcher,
    run_wrapper,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "drbd"

# A fake events2 emitter. Run 1: the Primary's dump, then it dies (exit 10, a message on
# stderr). Run 2: the cut-off Secondary's dump, then one more change, then it stays alive.
FAKE_EVENTS2 = """#!/bin/sh
runs=$(cat "$STATE/runs" 2>/dev/null || echo 0)
runs=$((runs + 1))
echo "$runs" > "$STATE/runs"
echo $$ > "$STATE/pid"
if [ "$runs" = 1 ]; then
    cat "$FIXTURES/84-status-primary-uptodate.txt"
    echo "fake events2: going away" >&2
    exit 10
fi
cat "$FIXTURES/84-status-secondary-cut-off.txt"
sleep 0.3
echo "2026-12-04T15:49:45.486107+00:00 change device name:r0 volume:0 minor:0 disk:Outdated"
echo "this is not events2 output"
exec sleep 600
"""


async def wait_for(cond: object, timeout_s: float = 15.0) -> None:
    assert callable(cond)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def fake_events2(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    script = tmp_path / "fake-events2.sh"
    script.write_text(FAKE_EVENTS2)
    state = tmp_path / "state"
    state.mkdir()
    return ["sh", str(script)], {"STATE": str(state), "FIXTURES": str(FIXTURES)}, state


async def test_watcher_restarts_events2_and_wakes_the_loop(
    fake_events2: tuple[list[str], dict[str, str], Path],
) -> None:
    argv, env, state = fake_events2
    wakes = 0

    def wake() -> None:
        nonlocal wakes
        wakes += 1

    watcher = DrbdWatcher("r0", wake, argv=argv, env=env, backoff_initial_s=0.2)
    watcher.start()
    try:
        # Run 1 shows a Primary, then dies: restarted after the back-off.
        await wait_for(lambda: watcher.restarts >= 1)
        assert "fake events2: going away" in watcher.stderr_tail
        # Run 2: the cut-off Secondary, then its disk becomes Outdated.
        await wait_for(
            lambda: (o := watcher.observation()) is not None and o.disk is DiskState.OUTDATED
        )
        obs = watcher.observation()
        assert obs is not None
        assert (obs.role, obs.connected) == (ReplicaRole.SECONDARY, False)
        assert watcher.restarts == 1 and watcher.bad_lines == 1
        assert wakes >= 4  # dump 1, death, dump 2, the change
        pid = int((state / "pid").read_text())
        os.kill(pid, 0)  # still running
    finally:
        await watcher.stop()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            await asyncio.sleep(0.02)
    assert watcher.observation() is None


async def test_no_observation_until_the_dump_is_complete(tmp_path: Path) -> None:
    # A fake events2 emitter that prints half a dump and hangs.
    script = tmp_path / "half.sh"
    script.write_text(
        "#!/bin/sh\nhead -n 2 " + str(FIXTURES / "84-status-primary-uptodate.txt") + "\n"
        "exec sleep 600\n"
    )
    watcher = DrbdWatcher("r0", lambda: None, argv=["sh", str(script)])
    watcher.start()
    try:
        await wait_for(lambda: watcher.tracker.get("r0") is not None)
        assert watcher.observation() is None and not watcher.current
    finally:
        await watcher.stop()


async def test_backoff_doubles_up_to_the_maximum(tmp_path: Path) -> None:
    # A missing program: every start fails at once.
    watcher = DrbdWatcher(
        "r0",
        lambda: None,
        argv=[str(tmp_path / "no-such-events2")],
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    watcher.start()
    try:
        await wait_for(lambda: watcher.restarts >= 5)
    finally:
        await watcher.stop()
    # 0.05 + 0.1 + 0.2 + 0.2 + 0.2 at least, with no busy loop.
    assert loop.time() - t0 >= 0.7


async def test_the_loop_is_never_blocked(tmp_path: Path) -> None:
    # A fake events2 emitter that floods: the loop must keep ticking.
    line = "change peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 replication:Off"
    script = tmp_path / "flood.sh"
    script.write_text(
        f"#!/bin/sh\ncat {FIXTURES / '84-status-primary-uptodate.txt'}\n"
        f"i=0; while [ $i -lt 20000 ]; do echo '{line}'; i=$((i+1)); done\nexec sleep 600\n"
    )
    watcher = DrbdWatcher("r0", lambda: None, argv=["sh", str(script)])
    loop = asyncio.get_running_loop()
    worst = 0.0
    watcher.start()
    try:
        for _ in range(100):
            t = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - t - 0.01)
        await wait_for(lambda: watcher.current)
    finally:
        await watcher.stop()
    assert worst < 0.5


async def test_wrapper_contract_without_drbd_utils(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad usage"):
        await run_wrapper("status", "-rf", 10)
    with pytest.raises(ValueError, match="bad usage"):
        await run_wrapper("frobnicate", "r0", 10)
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "DRBD_VERSION": "9"}
    with pytest.raises(DrbdUnavailableError):
        await run_wrapper("promote", "r0", 10, wrapper=("/bin/sh", str(WRAPPER)), env=env)


async def test_wrapper_passes_drbds_status_through_and_times_out(tmp_path: Path) -> None:
    # A fake drbdadm (named as one): exits like drbdsetup-84 does when DRBD refuses a
    # promotion (exit 17, measured in the guests), or hangs.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "drbdadm"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = secondary ] && exec sleep 600\n'
        'echo "0: State change failed: (-2) Need access to UpToDate data" >&2\nexit 17\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DRBD_VERSION": "8.4"}
    result = await run_wrapper("promote", "r0", 10, env=env)
    assert result.returncode == 17 and "UpToDate" in result.stderr
    result = await run_wrapper("demote", "r0", 0.5, env=env)
    assert result.returncode == -1
    replicas = DrbdReplicas(["r0"], lambda: None, timeout_s=0.5, env=env)
    with pytest.raises(DrbdError, match="exit 17"):
        await replicas.promote("r0")
    with pytest.raises(DrbdError, match="no answer"):
        await replicas.demote("r0")
    assert await replicas.observe() == {}


async def test_wrapper_version_detection() -> None:
    proc = await asyncio.create_subprocess_exec(
        "sh",
        str(WRAPPER),
        "version",
        env={**os.environ, "DRBD_VERSION": "8.4"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert out.decode().strip() == "8.4"
    proc = await asyncio.create_subprocess_exec(
        "sh", str(WRAPPER), "version", env={**os.environ, "DRBD_VERSION": "7"}
    )
    assert await proc.wait() == 64
