"""Measuring instruments for a local cluster of real agents, read from outside the agents.

Used by `haagent.localcluster.scale` and the scale benchmarks: CPU and RSS from /proc, Raft
traffic from the kernel's TCP counters (`ss -ti`), metrics scraped from `/metrics` (with
Prometheus' `histogram_quantile` over bucket deltas), and a status sampler.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from haagent.localcluster.cluster import LocalCluster, http_get

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
"""Metric samples of one scrape: sample name -> sorted label pairs -> value."""


# --- /proc and ss ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class Traffic:
    """Kernel TCP counters summed over some connections."""

    bytes_out: int = 0
    bytes_in: int = 0
    segs_out: int = 0  # segments carrying data
    segs_in: int = 0
    connections: frozenset[tuple[int, int]] = frozenset()  # (local port, peer port)

    def minus(self, before: Traffic) -> Traffic:
        return Traffic(
            self.bytes_out - before.bytes_out,
            self.bytes_in - before.bytes_in,
            self.segs_out - before.segs_out,
            self.segs_in - before.segs_in,
            self.connections,
        )


_SS_PID = re.compile(r"pid=(\d+),")
_SS_FIELD = re.compile(r"\b(bytes_sent|bytes_received|data_segs_out|data_segs_in):(\d+)")


def raft_traffic(pids: dict[int, str], raft_ports: set[int]) -> dict[str, Traffic]:
    """Per agent (by pid): the TCP counters of its established connections that have a Raft
    port at either end."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    return parse_ss(out, pids, raft_ports)


def parse_ss(text: str, pids: dict[int, str], raft_ports: set[int]) -> dict[str, Traffic]:
    """`ss -tinpH state established` output (a socket line, then its indented info line)
    summed per owner in `pids`, over connections with a port in `raft_ports` at either end."""
    lines = text.splitlines()
    totals: dict[str, dict[str, int]] = {}
    conns: dict[str, set[tuple[int, int]]] = {}
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        parts = head.split()
        if len(parts) < 5:
            continue
        local_port = int(parts[2].rpartition(":")[2])
        peer_port = int(parts[3].rpartition(":")[2])
        if local_port not in raft_ports and peer_port not in raft_ports:
            continue
        owners = {int(p) for p in _SS_PID.findall(head)}
        node = next((pids[p] for p in owners if p in pids), None)
        if node is None:
            continue
        t = totals.setdefault(node, {})
        for key, value in _SS_FIELD.findall(info):
            t[key] = t.get(key, 0) + int(value)
        conns.setdefault(node, set()).add((local_port, peer_port))
    return {
        node: Traffic(
            t.get("bytes_sent", 0),
            t.get("bytes_received", 0),
            t.get("data_segs_out", 0),
            t.get("data_segs_in", 0),
            frozenset(conns.get(node, set())),
        )
        for node, t in totals.items()
    }


# --- metrics ----------------------------------------------------------------------------------


def scrape(cluster: LocalCluster, node: str, timeout_s: float = 10.0) -> Samples:
    text = http_get(cluster.api_listen(node), "/metrics", None, timeout_s).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = float(s.value)
    return samples


def counter_total(samples: Samples, name: str) -> float:
    return sum(samples.get(name, {}).values())


def bucket_counts(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative counts of histogram `name` by upper bound (+Inf included)."""
    counts: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", {}).items():
        counts[float(dict(labels)["le"])] = value
    return counts


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus' `histogram_quantile` over cumulative bucket counts: linear inside the bucket
    that holds the rank; the highest finite bound if the rank is in +Inf; NaN if empty."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return float("nan")
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def histogram_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {b: v - before.get(b, 0.0) for b, v in after.items()}


# --- sampling status --------------------------------------------------------------------------


class StatusSampler:
    """One thread per agent asks `GET /v1/status` every `interval_s` and keeps a digest of
    each answer (quorum, term, failure epochs, commit index). A slow agent delays only its own
    thread. `stop()` joins every thread."""

    def __init__(self, cluster: LocalCluster, interval_s: float = 1.0) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.answers: list[dict[str, Any]] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in cluster.nodes()
        ]

    def _run(self, node: str) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                doc = self.cluster.status(node, timeout_s=max(2.0, self.interval_s))
                digest = {
                    "node": node,
                    "quorum": bool(doc["quorum"]),
                    "reason": doc.get("lease_lost_reason"),
                    "term": int(doc["term"]),
                    "epochs": {n: int(r["failure_epoch"]) for n, r in doc["nodes"].items()},
                    "commit_index": int(doc["commit_index"]),
                }
                with self._lock:
                    self.answers.append(digest)
            except (OSError, ValueError, KeyError):
                with self._lock:
                    self.errors += 1
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> StatusSampler:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
