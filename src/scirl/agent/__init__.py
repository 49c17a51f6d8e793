"""Agents that use tools: the tool registry (`tools`), the Hermes tool-call format (`hermes`) and the multi-turn
rollout on any engine (`rollout`)."""
