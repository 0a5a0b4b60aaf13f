"""The agent core in parts: one small pure module per concern, composed by `AgentCore.tick`
(haagent.agent) in a fixed order. See haagent/agent.py for the order and why."""
