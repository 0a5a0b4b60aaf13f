"""The daemon: the asyncio shell around the core, split by concern.

| module | responsibility |
|---|---|
| `shell` | lifecycle, the event/deadline-driven loop (the lease path), watchdog feeding |
| `surface` | the HTTP handlers (`haagent.api.Handlers`) over the daemon |
| `observer` | the local hypervisor as last seen, refreshed in its own task |
| `executor` | the core's actions against the adapters, exhaustive dispatch, timeouts |
| `admin` | enable/disable, maintenance, what-if and tolerated failures (off the loop) |
| `telemetry` | snapshots, loop stats, metrics on scrape, the status document |
| `failover` | failover durations from committed state changes |
"""

from haagent.daemon.shell import Daemon, StartupError, run_daemon

__all__ = ["Daemon", "StartupError", "run_daemon"]
