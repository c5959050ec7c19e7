"""Aegis benchmarks: each prints its figures as a table and, last, one JSON line.

Run them through ``./aegis bench [NAME]`` (scripts/bench.sh) from the repository root;
each is a module here (``python -m benchmarks.<name>``) and prints through
``benchmarks.figures.report``. Nothing here is imported by the product packages.
"""
