"""The deterministic cluster simulator: real agent cores against fakes.

- `world`: `World`, N `AgentCore`s and the real `apply`, with a fake clock, Raft log,
  hypervisors, fence devices, watchdogs and network.
- `replicas`, `events2`, `fence_peer`: `FakeDrbd`, DRBD 8.4 as the test guests showed it,
  read by each agent through fake events2 watchers and the production parser, with a fake
  fence-peer handler that commits through the fake Raft.
- `invariants`: `InvariantChecker`, the safety and healing invariants checked after every step.
- `scenario`: the scenario file language (tests/scenarios/*.scn) and `scenario_main`
  (`haagent simulate --scenario FILE`).
- `swarm`: random fault schedules and `swarm_main` (`haagent simulate --swarm --seeds N`).
"""
