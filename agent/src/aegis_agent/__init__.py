"""Aegis node agent: the eBPF data plane and monitors (bpf), the daemon (daemon), its
durable spool, local policy, control socket and CLI."""

__version__ = "0.1.0"
