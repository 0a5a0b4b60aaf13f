"""`haagent local up|down|status|demo`: the 3-node cluster of the README on this machine."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from haagent.config import ConfigError, load_config
from haagent.localcluster.cluster import ClusterError, LocalCluster, wait_for
from haagent.localcluster.drbd_demo import run_drbd_demo
from haagent.localcluster.parser import DEFAULT_DIR, REPO_EXAMPLE, TENTH_FLOOR_WATCHDOG_S
from haagent.status import format_status

__all__ = ["DEFAULT_DIR", "REPO_EXAMPLE", "TENTH_FLOOR_WATCHDOG_S"]


def _fail(message: str) -> int:
    print(f"haagent local: {message}", file=sys.stderr)
    return 1


def check_example(example: Path) -> None:
    """Validate every node config of an example folder before anything starts: an invalid one
    is a ConfigError (exit 2), not an agent that dies in the background. The BMC parameters
    `local up` reads itself are checked too."""
    configs = sorted(example.glob("*.toml")) if example.is_dir() else []
    if not (example / "n1.toml").is_file():
        raise ClusterError(f"{example} holds no node configs (n1.toml ...)")
    for path in configs:
        cfg = load_config(path)
        for device in cfg.fence_devices.values():
            if device.agent != "fence_ipmilan":
                continue
            needed = ("ip", "ipport", "username", "password")
            missing = [k for k in needed if k not in device.params]
            port = device.params.get("ipport", "")
            if missing or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError(
                    path,
                    f"fence_devices.{device.name}.params",
                    "`haagent local` runs a simulated BMC for fence_ipmilan and needs ip, "
                    "ipport (1-65535), username and password",
                )


TENTH_FLOOR_POWER_TIMEOUT_S = 2  # fence_ipmilan gives up on a dead BMC after this, not 20 s


def tenth_floor_config(text: str) -> str:
    """An example node config with a final watchdog level on every node (the stand-in watchdog,
    opted into: this machine has no /dev/watchdog) and fence_ipmilan giving up quickly."""
    lines = []
    for original in text.splitlines():
        line = original.rstrip()
        stripped = line.strip()
        if stripped.startswith("fence = [[") and stripped.endswith("]]"):
            lines += [
                line[:-1] + ', "watchdog"]',
                f"watchdog_timeout_s = {TENTH_FLOOR_WATCHDOG_S!r}",
            ]
            continue
        if stripped.startswith("params = {") and "ipport" in stripped and stripped.endswith("}"):
            line = f"{line[:-1].rstrip()}, power_timeout = {TENTH_FLOOR_POWER_TIMEOUT_S} }}"
        lines.append(line)
        if stripped == "[local]":
            lines.append("watchdog_standin_ok = true  # no /dev/watchdog here: a demo only")
    return "\n".join(lines) + "\n"


def _up(run_dir: Path, example: Path, tenth_floor: bool = False) -> LocalCluster:
    check_example(example)
    cluster = LocalCluster(run_dir)
    if run_dir.exists():
        if any(cluster.agent_pid(n) for n in cluster.nodes()):
            raise ClusterError(f"a cluster already runs in {run_dir}; `haagent local down` first")
        shutil.rmtree(run_dir)
    cluster.adopt(example)
    if tenth_floor:
        for node in cluster.nodes():
            path = cluster.config_path(node)
            path.write_text(tenth_floor_config(path.read_text()))
            load_config(path)  # still valid
    t0 = time.monotonic()
    try:
        cluster.start(timeout_s=60)
    except Exception:
        cluster.stop()
        raise
    print(f"cluster up in {time.monotonic() - t0:.1f}s (run folder {run_dir})")
    for node in cluster.nodes():
        print(
            f"  {node}: http://{cluster.api_listen(node)}/v1/status   "
            f"pid {cluster.agent_pid(node)}   log {cluster.log_file(node)}"
        )
    print(
        f"  token: {cluster.token(cluster.nodes()[0])}  "
        "(curl -H 'Authorization: Bearer TOKEN' URL, or `haagent local status`)"
    )
    return cluster


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        _up(args.dir, args.example)
    except ClusterError as exc:
        return _fail(str(exc))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    if not args.dir.exists():
        return _fail(f"no run folder {args.dir}")
    if not (args.dir / "pids").is_dir():
        # A regular file, or a folder `local up` did not make: there is nothing to stop, and
        # saying "stopped" would be a lie.
        return _fail(f"{args.dir} is not a run folder of `haagent local up` (no pids/ in it)")
    cluster.stop()
    print(f"stopped the cluster in {args.dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        doc = LocalCluster(args.dir).any_status()
    except ClusterError as exc:
        return _fail(str(exc))
    print(format_status(doc))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.drbd:
        if args.tenth_floor or args.keep:
            return _fail("--drbd runs in the simulator: no --tenth-floor, no --keep")
        return run_drbd_demo()
    try:
        cluster = _up(args.dir, args.example, tenth_floor=args.tenth_floor)
    except ClusterError as exc:
        return _fail(str(exc))
    try:
        print()
        print(format_status(cluster.any_status()))
        result = run_failover(cluster, args.guest, verbose=True, with_bmc=args.tenth_floor)
        print()
        print(format_status(cluster.any_status(exclude=(result["victim"],))))
        print()
        if args.tenth_floor:
            # Its BMC is gone: the admin replaces the host (here: restarts BMC and agent).
            print(f"{result['victim']} is replaced: its BMC and agent start again")
            cluster.bmcs.pop(result["victim"]).stop()
            cluster.start_bmcs(only=result["victim"])
            cluster.start_agent(result["victim"])
        else:
            print(
                f"powering {result['victim']} back on through its BMC (ipmitool chassis power on)"
            )
            power_on(cluster, result["victim"])
        wait_for(f"{result['victim']} to rejoin", lambda: cluster.rejoined(result["victim"]), 30)
        print(f"{result['victim']} rejoined; the guest stays where it is (no second copy):")
        print(format_status(cluster.any_status()))
    except ClusterError as exc:
        return _fail(str(exc))
    finally:
        if not args.keep:
            cluster.stop()
            print(f"\ncluster stopped (logs in {args.dir}/logs)")
    return 0


def power_on(cluster: LocalCluster, node: str) -> None:
    """Power a node on through its simulated BMC, as an admin would with ipmitool."""
    cfg = cluster._config(node)
    levels = [level for level in cfg["nodes"][node]["fence"] if isinstance(level, list)]
    devices = [cfg["fence_devices"][d] for level in levels for d in level]
    ipmi = [d for d in devices if d["agent"] == "fence_ipmilan"]
    if not ipmi:
        raise ClusterError(f"{node} has no fence_ipmilan device to power it on with")
    p = ipmi[0]["params"]
    subprocess.run(
        [
            "ipmitool",
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            str(p["ip"]),
            "-p",
            str(p["ipport"]),
            "-U",
            str(p["username"]),
            "-P",
            str(p["password"]),
            "chassis",
            "power",
            "on",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def run_failover(
    cluster: LocalCluster,
    guest: str,
    verbose: bool = False,
    timeout_s: float = 60.0,
    with_bmc: bool = False,
) -> dict[str, Any]:
    """SIGKILL the agent owning `guest` (and its BMC too, `with_bmc`: the 10th-floor case) and
    time the recovery as the survivors report it.

    Returns the timeline in seconds after the kill: failure declared, fence confirmed, guest
    running on a survivor, plus the victim and the new owner. Polls every 50 ms.
    """
    doc = cluster.any_status()
    if guest not in doc["guests"]:
        raise ClusterError(f"no guest {guest!r}; guests: {', '.join(doc['guests'])}")
    victim = doc["guests"][guest]["owner"]
    generation = doc["guests"][guest]["generation"]
    survivors = [n for n in cluster.nodes() if n != victim]
    if verbose:
        print(
            f"\n{guest} runs on {victim} (generation {generation}); "
            f"SIGKILL of {victim}'s agent = power loss of its hypervisor"
            + (
                f", and of its BMC (ipmi_sim): every power fence of {victim} fails"
                if with_bmc
                else ""
            )
        )
    t0 = time.monotonic()
    cluster.signal_agent(victim, signal.SIGKILL)
    if with_bmc:
        cluster.kill_bmc(victim)
    method = ""
    timeline: dict[str, float] = {}
    owner = None

    def poll() -> bool | None:
        nonlocal owner, method
        now = time.monotonic() - t0
        for node in survivors:
            try:
                d = cluster.status(node, timeout_s=1.0)
            except (OSError, ValueError):
                continue
            if not d["quorum"]:
                continue  # no lease: its view may be stale
            v = d["nodes"].get(victim, {})
            if v.get("state") in ("failed", "fenced"):
                timeline.setdefault("declared_failed", now)
            if (v.get("fence") or {}).get("last_result") == "failed":
                timeline.setdefault("power_fence_failed", now)
            if v.get("state") == "fenced":
                timeline.setdefault("fenced", now)
                method = method or str((v.get("fence") or {}).get("method") or "")
            g = d["guests"][guest]
            if g["owner"] != victim and g["generation"] > generation:
                timeline.setdefault("reassigned", now)
            if g["owner"] in survivors and g["state"] == "running":
                # Confirm with the new owner's own observation of its hypervisor.
                od = cluster.status(g["owner"], timeout_s=1.0)
                if guest in (od["local"] or {}):
                    timeline.setdefault("running", now)
                    owner = g["owner"]
                    return True
        return None

    wait_for(f"{guest} to run on a survivor", poll, timeout_s, interval_s=0.05)
    result: dict[str, Any] = {
        "victim": victim,
        "new_owner": owner,
        "fence_method": method,
        **timeline,
    }
    if verbose:
        print("timeline (seconds after the kill, as the survivors reported it):")
        for key in ("declared_failed", "power_fence_failed", "fenced", "reassigned", "running"):
            if key in timeline:
                print(f"  +{timeline[key]:6.2f}s  {key.replace('_', ' ')}")
        how = f" (by {method})" if method else ""
        print(
            f"recovered {guest} on {owner} in {timeline['running']:.2f}s, "
            f"fenced first{how}, one copy only"
        )
    return result
