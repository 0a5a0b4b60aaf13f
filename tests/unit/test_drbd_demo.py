"""`haagent local demo --drbd`: the DRBD failover on the simulator's DRBD, said to be simulated."""

from __future__ import annotations

import pytest

from haagent.cli import main


def test_the_drbd_demo_shows_the_promotion_after_the_fence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["local", "demo", "--drbd"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "no DRBD kernel module" in out
    lines = out.splitlines()

    def first(text: str, node: str) -> int:
        return next(i for i, line in enumerate(lines) if node in line and text in line)

    fenced = first("fence confirmed", "hv2")
    assert first("the host powers off", "hv1") < fenced
    assert fenced < first("DRBD replica is Primary", "hv2") < first("domain running", "hv2")
    assert "ok: db runs on hv2" in out and "0 safety violations" in out


def test_the_drbd_demo_refuses_options_of_the_real_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["local", "demo", "--drbd", "--keep"]) == 1
    assert "--drbd runs in the simulator" in capsys.readouterr().err
