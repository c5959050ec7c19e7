"""Aegis control plane, recovery engine and local lab fleet driver."""

__version__ = "0.1.0"
