"""The scale benchmark's instruments: quantiles from histogram buckets, and `ss` parsing."""

from __future__ import annotations

import math

import pytest

from haagent.localcluster.measure import (
    Traffic,
    histogram_delta,
    histogram_quantile,
    parse_ss,
)

INF = math.inf

# Two sockets of pid 10 (one dialled from an ephemeral port to a Raft port, one accepted on
# its own Raft port), one of pid 11, one of pid 10 to a port that is not Raft (its API client),
# as `ss -tinpH state established` prints them (info lines shortened).
SS = """\
0 0 127.0.0.1:40001 127.0.0.1:5001 users:(("python",pid=10,fd=7))
\t cubic bytes_sent:1000 bytes_received:300 segs_out:9 segs_in:8 data_segs_out:5 data_segs_in:4
0 0 127.0.0.1:5002 127.0.0.1:40002 users:(("python",pid=10,fd=8))
\t cubic bytes_sent:20 bytes_received:7 data_segs_out:2 data_segs_in:1
0 0 127.0.0.1:5003 127.0.0.1:40003 users:(("python",pid=11,fd=8))
\t cubic bytes_sent:5 bytes_received:6 data_segs_out:1 data_segs_in:1
0 0 127.0.0.1:40004 127.0.0.1:8080 users:(("python",pid=10,fd=9))
\t cubic bytes_sent:999999 bytes_received:999999 data_segs_out:99 data_segs_in:99
"""


def test_ss_counters_are_summed_per_agent_over_raft_connections_only() -> None:
    got = parse_ss(SS, {10: "n1", 11: "n2"}, {5001, 5002, 5003})
    assert got["n1"] == Traffic(1020, 307, 7, 5, frozenset({(40001, 5001), (5002, 40002)}))
    assert got["n2"] == Traffic(5, 6, 1, 1, frozenset({(5003, 40003)}))
    assert parse_ss(SS, {12: "n3"}, {5001}) == {}


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 100 observations: 50 below 1 ms, 40 in (1, 5] ms, 10 in (5, 10] ms.
    cumulative = {0.001: 50.0, 0.005: 90.0, 0.01: 100.0, INF: 100.0}
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.001)
    assert histogram_quantile(0.7, cumulative) == pytest.approx(0.003)
    assert histogram_quantile(0.99, cumulative) == pytest.approx(0.0095)


def test_quantile_in_the_inf_bucket_is_the_highest_bound_and_empty_is_nan() -> None:
    assert histogram_quantile(0.99, {0.01: 1.0, INF: 10.0}) == 0.01
    assert math.isnan(histogram_quantile(0.5, {0.01: 0.0, INF: 0.0}))
    assert math.isnan(histogram_quantile(0.5, {}))


def test_delta_is_what_a_window_added() -> None:
    before = {0.001: 5.0, INF: 6.0}
    after = {0.001: 8.0, 0.005: 2.0, INF: 12.0}
    assert histogram_delta(after, before) == {0.001: 3.0, 0.005: 2.0, INF: 6.0}
