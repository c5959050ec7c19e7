"""Structured logging (the shared JSON-lines formatter lives in aegis_protocol.logs)."""

from aegis_protocol.logs import JsonLines, setup

__all__ = ["JsonLines", "setup"]
