"""Suite-wide rules: a skipped test fails the run (a test skipped in CI is not a test).

Options: `--regen-traces` rewrites the expected traces of the simulator scenarios
(tests/scenarios/*.trace) instead of diffing them; `HAAGENT_REGEN_TRACES=1` does the same.
"""

from __future__ import annotations

import pytest

_skipped: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-traces",
        action="store_true",
        default=False,
        help="rewrite tests/scenarios/*.trace from the simulator instead of diffing them "
        "(same as HAAGENT_REGEN_TRACES=1)",
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; this suite allows none: "
            + ", ".join(_skipped),
            red=True,
        )
