"""What the CLI prints of an agent's answers: each line escaped (names and reasons come from
the network), an admin verb's outcome, a what-if document, and the one-line error for an
answer of a shape this CLI does not know (another version, or not an agent at all).
"""

from __future__ import annotations

from typing import Any

from haagent.cli_agent import CliError
from haagent.untrusted import escape

# What an agent's document may fail with when it is not the shape this CLI knows (another
# version, or not an agent at all): reported as an operation that failed, not a traceback.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def report_outcome(doc: dict[str, Any], what: str) -> int:
    outcome = doc.get("outcome")
    detail = escape(str(doc.get("detail")), 300)
    if outcome == "accepted":
        print(f"{what}: done")
        return 0
    if outcome == "refused":
        raise CliError(f"{what}: refused: {detail}")
    raise CliError(f"{what}: unknown outcome ({detail}); check `haagent status`")


def printable(text: str) -> str:
    """Text made of an agent's answer, each line escaped: names and reasons come from the
    network and must not drive the terminal (escape sequences, carriage returns)."""
    return "\n".join(escape(line) for line in text.split("\n"))


def shape_error(url: str, what: str, exc: Exception) -> CliError:
    return CliError(
        f"the agent at {url} answered {what} this haagent cannot read "
        f"({type(exc).__name__}: {escape(str(exc), 80)}); is it the same haagent version?"
    )


def format_whatif(doc: dict[str, Any], source: str) -> str:
    lines = [f"what if {', '.join(doc['fail'])} failed now ({source}):"]
    if not doc["quorum_kept"]:
        lines.append("  the survivors would have no Raft majority: no guest would be recovered")
    for guest, move in doc["moves"].items():
        lines.append(f"  {guest}: {move['from']} -> {move['to']}")
    for guest, why in doc["unplaced"].items():
        lines.append(f"  {guest}: would NOT run: {why}")
    if not doc["moves"] and not doc["unplaced"]:
        lines.append("  no guest would have to move")
    lines.append(
        f"the cluster tolerates {doc['tolerated_node_failures']} node failure(s) now: "
        f"{doc['tolerated_detail']}"
    )
    return "\n".join(lines)
