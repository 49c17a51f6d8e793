"""Agents that use tools: the tool registry (`tools`) and the Hermes tool-call format (`hermes`)."""
