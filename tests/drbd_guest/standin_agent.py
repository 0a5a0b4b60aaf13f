"""A stand-in for the haagent daemon's fence endpoint, run inside a test guest.

It serves the production protocol with the production `FenceServer`; only the decision is
scripted: `fence-peer` answers the verdict written in VERDICT_FILE (read at each request, so
the test can change it), `unfence-peer` answers `unfenced`. Every request is appended to
LOG_FILE as one JSON line.

    python -m tests.drbd_guest.standin_agent SOCKET VERDICT_FILE LOG_FILE
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from haagent.resources.drbd_fence import FenceAnswer, FenceRequest, FenceServer, Verdict


class FileAuthority:
    def __init__(self, verdict_file: Path, log_file: Path) -> None:
        self.verdict_file = verdict_file
        self.log_file = log_file

    def _log(self, request: FenceRequest, answer: FenceAnswer) -> None:
        doc = {**asdict(request), "op": request.op.value, "verdict": answer.verdict.value}
        with self.log_file.open("a") as f:
            f.write(json.dumps(doc, sort_keys=True) + "\n")

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        verdict = Verdict(self.verdict_file.read_text().strip())
        answer = FenceAnswer(verdict, "stand-in agent (scripted by the test)")
        self._log(request, answer)
        return answer

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        answer = FenceAnswer(Verdict.UNFENCED, "stand-in agent")
        self._log(request, answer)
        return answer


async def serve(sock: str, verdict_file: str, log_file: str) -> None:
    server = FenceServer(sock, FileAuthority(Path(verdict_file), Path(log_file)))
    await server.start()
    print("STANDIN READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))
