"""The deterministic cluster simulator: real agent cores against fakes.

- `world`: `World`, N `AgentCore`s and the real `apply`, with a fake clock, Raft log,
  hypervisors, fence devices, watchdogs and network.
- `invariants`: `InvariantChecker`, the safety and healing invariants checked after every step.
- `scenario`: the scenario file language (tests/scenarios/*.scn) and `scenario_main`
  (`haagent simulate --scenario FILE`).
- `swarm`: random fault schedules and `swarm_main` (`haagent simulate --swarm --seeds N`).
"""
