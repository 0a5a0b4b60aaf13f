#!/usr/bin/env python3
"""Soak: a healthy cluster on a lossy network under CPU pressure. Every disruption is false.

    .venv/bin/python benchmarks/soak.py [--nodes 3] [--minutes 30] [--loss 0.05] [--burners 2]
                                         [--guests 6] [--profile balanced|robust|fast] [--json]

Real `haagent run` agents, one per network namespace, on one bridge (tests/helpers/netns.py);
fence_dummy, so a fence only records a power-off. Once every guest runs, nft drops `--loss` of
the frames crossing the bridge at random (`numgen random`; the kernel has no netem) and
`--burners` busy loops keep the cores saturated, for the given time. Nobody is faulted, so
every one of these is a false alarm and should be zero:

* false failures: nodes declared failed (their committed failure epoch grew);
* fences: fence operations run (`fence NODE:` in the agents' logs);
* term changes: Raft terms started during the soak (highest term seen minus the first);
* lease-loss samples: status samples (every 100 ms per node, over unix sockets the loss
  cannot touch) in which a live agent held no valid lease;
* guest restarts: starts beyond the first (generation steps) plus domains destroyed for lack
  of a lease;
* double runs: moments a guest may have run on two nodes (tests/helpers/cluster_watch.py).

Prints one line per figure (or a JSON document) and exits 1 if any is not zero. Needs root
(namespaces, nft). Every process it starts is stopped by pid, and the namespaces are deleted,
also when it fails or is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from haagent.localcluster.cluster import LocalCluster
from haagent.timing import TIMING_PROFILES
from tests.helpers.cluster_watch import ClusterWatch
from tests.helpers.netns import NetnsLab
from tests.helpers.netns_cluster import log_count, netns_plan, nft, wait_settled


@dataclass(frozen=True)
class SoakResult:
    nodes: int
    seconds: float
    loss: float
    burners: int
    profile: str
    false_failures: int
    fences: int
    term_changes: int
    lease_loss_samples: int
    samples: int
    guest_restarts: int
    lease_destroys: int
    double_runs: int
    load_average: tuple[float, float, float]
    dropped_frames: int
    max_replica_lag: int | None  # entries; None: the agents do not report it (older code)
    longest_lag_s: float | None  # longest stretch one replica stayed > 5 entries behind
    lease_loss_reasons: dict[str, int]  # "node: reason" -> samples (newer agents report it)

    @property
    def clean(self) -> bool:
        return not (
            self.false_failures
            or self.fences
            or self.term_changes
            or self.lease_loss_samples
            or self.guest_restarts
            or self.double_runs
        )

    def lines(self) -> list[str]:
        la = " ".join(f"{x:.2f}" for x in self.load_average)
        return [
            f"soak: {self.nodes} nodes, {self.seconds:.0f} s, {self.loss:.1%} random loss on "
            f"the bridge ({self.dropped_frames} frames dropped), {self.burners} CPU burners on "
            f"{os.cpu_count()} cores, profile {self.profile}; load average at the end {la}",
            f"  false failures (nodes declared failed) {self.false_failures}",
            f"  fences                                 {self.fences}",
            f"  Raft term changes                      {self.term_changes}",
            f"  lease-loss samples                     {self.lease_loss_samples} of {self.samples}"
            + (f" {self.lease_loss_reasons}" if self.lease_loss_reasons else ""),
            f"  guest restarts                         {self.guest_restarts} "
            f"({self.lease_destroys} destroyed for lack of a lease)",
            f"  double runs                            {self.double_runs}",
            "  replica lag (applied vs leader's commit): "
            + (
                "not reported by these agents"
                if self.max_replica_lag is None
                else f"max {self.max_replica_lag} entries, longest stretch > 5 entries "
                f"{self.longest_lag_s:.2f} s"
            ),
        ]


@contextmanager
def random_loss(lab: NetnsLab, loss: float) -> Iterator[None]:
    """Drop `loss` of the frames the lab's bridge forwards, in both directions."""
    permille = round(loss * 1000)
    nft(
        lab.switch,
        "table bridge soak {\n chain loss {\n"
        "  type filter hook forward priority 0; policy accept;\n"
        f"  numgen random mod 1000 < {permille} counter drop\n }}\n}}\n",
    )
    try:
        yield
    finally:
        nft(lab.switch, "delete table bridge soak\n")


def dropped_frames(lab: NetnsLab) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", lab.switch, "nft", "list", "table", "bridge", "soak"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    m = re.search(r"counter packets (\d+)", out)
    return int(m.group(1)) if m else 0


@contextmanager
def burners(count: int) -> Iterator[None]:
    """`count` busy loops (separate processes), killed by pid on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def replica_lag(watch: ClusterWatch, entries: int = 5) -> tuple[int | None, float | None]:
    """The largest lag any sample showed, and the longest time one node's samples stayed more
    than `entries` behind (from its first such sample to the next one that was not)."""
    max_lag: int | None = None
    longest = 0.0
    for node in watch.nodes:
        since: float | None = None
        for o in watch.answers(node):
            assert o.doc is not None
            replica = o.doc.get("replica")
            if replica is None:
                continue
            max_lag = max(max_lag or 0, int(replica["lag"]))
            if replica["lag"] > entries:
                since = o.t0 if since is None else since
            elif since is not None:
                longest = max(longest, o.t0 - since)
                since = None
    return max_lag, (None if max_lag is None else longest)


def soak(
    nodes: int = 3,
    seconds: float = 60.0,
    loss: float = 0.05,
    burner_count: int = 2,
    guests: int = 6,
    profile: str | None = None,
    run_dir: Path | None = None,
) -> SoakResult:
    """Run one soak and return its figures. Everything started is stopped before it returns."""
    with ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="haagent-soak-")))
        lab = NetnsLab(nodes, subnet="10.214.0")
        lab.up()
        stack.callback(lab.down)
        api_dir = run_dir / "api"
        api_dir.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(run_dir / "cluster", netns_plan(lab, api_dir, guests, profile))
        cluster.write()
        stack.callback(cluster.stop)
        cluster.start(timeout_s=60.0)
        # Every node holds a lease and every guest runs before the faults begin.
        docs = wait_settled(cluster)
        first = cluster.any_status()
        gens0 = {g: rec["generation"] for g, rec in first["guests"].items()}
        epochs0 = {n: rec["failure_epoch"] for n, rec in first["nodes"].items()}
        term0 = min(d["term"] for d in docs)
        fences0 = log_count(cluster, r"fence n\d+: ")
        destroys0 = log_count(cluster, r"destroyed .*no valid lease")

        watch = ClusterWatch(cluster, interval_s=0.1, request_timeout_s=1.0)
        stack.enter_context(burners(burner_count))
        stack.enter_context(random_loss(lab, loss))
        watch.start()
        stack.callback(watch.stop)
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
        watch.stop()
        dropped = dropped_frames(lab)
        load = os.getloadavg()

        answers = watch.answers()
        terms = [o.doc["term"] for o in answers if o.doc is not None]
        epochs: dict[str, int] = dict(epochs0)
        gens: dict[str, int] = dict(gens0)
        for o in answers:
            assert o.doc is not None
            for n, rec in o.doc["nodes"].items():
                epochs[n] = max(epochs.get(n, 0), rec["failure_epoch"])
            for g, rec in o.doc["guests"].items():
                gens[g] = max(gens.get(g, 0), rec["generation"])
        double = sum(len(watch.overlaps(g)) for g in sorted(watch.guests_seen()))
        lease_destroys = log_count(cluster, r"destroyed .*no valid lease") - destroys0
        max_lag, longest = replica_lag(watch)
        reasons: dict[str, int] = {}
        for o in answers:
            if o.doc is not None and not o.doc["quorum"]:
                key = f"{o.node}: {o.doc.get('lease_lost_reason')}"
                reasons[key] = reasons.get(key, 0) + 1
        return SoakResult(
            nodes=nodes,
            seconds=seconds,
            loss=loss,
            burners=burner_count,
            profile=profile or "default",
            false_failures=sum(epochs[n] - epochs0.get(n, 0) for n in epochs),
            fences=log_count(cluster, r"fence n\d+: ") - fences0,
            term_changes=(max(terms) - term0) if terms else 0,
            lease_loss_samples=sum(1 for o in answers if o.doc is not None and not o.doc["quorum"]),
            samples=len(answers),
            guest_restarts=sum(gens[g] - gens0.get(g, 0) for g in gens) + lease_destroys,
            lease_destroys=lease_destroys,
            double_runs=double,
            load_average=load,
            dropped_frames=dropped,
            max_replica_lag=max_lag,
            longest_lag_s=longest,
            lease_loss_reasons=reasons,
        )
    raise AssertionError("unreachable")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--loss", type=float, default=0.05, help="fraction of frames dropped")
    p.add_argument("--burners", type=int, default=2, help="busy-loop processes")
    p.add_argument("--guests", type=int, default=6)
    p.add_argument("--profile", choices=sorted(TIMING_PROFILES), default=None)
    p.add_argument("--keep", type=Path, default=None, help="run folder to keep (logs)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = soak(
        args.nodes,
        args.minutes * 60,
        args.loss,
        args.burners,
        args.guests,
        args.profile,
        args.keep,
    )
    if args.json:
        print(json.dumps({**result.__dict__, "clean": result.clean}, indent=2))
    else:
        print("\n".join(result.lines()))
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
