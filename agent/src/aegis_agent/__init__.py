"""Aegis node agent (the eBPF data plane and daemon arrive with the agent-core issue)."""

__version__ = "0.1.0"
