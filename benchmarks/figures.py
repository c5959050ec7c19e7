"""The one way a benchmark prints its figures: an aligned table for people and, as the
last line, one JSON object for scripts (and for the smoke test that keeps benches running).

    report("ledger", {"append_single_per_s": 3026, ...},
           targets={"append_single_per_s": ">= 5000"}, notes={"filesystem": "ext4"})
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (p50, p99 of a small sample)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(bench: str, figures: Mapping[str, Any], *, title: str = "",
           targets: Mapping[str, str] | None = None, peers: Mapping[str, str] | None = None,
           notes: Mapping[str, Any] | None = None, out: TextIO = sys.stdout) -> None:
    """Print ``figures`` (name → number) as a table with each one's target and peer figure
    where given, then one JSON line ``{"bench": bench, **figures, **notes}``."""
    targets = targets or {}
    peers = peers or {}
    if title:
        print(title, file=out)
    width = max((len(k) for k in figures), default=0)
    for name, value in figures.items():
        extra = "".join(f"  {label} {text}" for label, text in
                        (("target", targets.get(name)), ("peer", peers.get(name))) if text)
        print(f"  {name:<{width}}  {_fmt(value):>12}{extra}", file=out)
    for name, value in (notes or {}).items():
        print(f"  {name}: {value}", file=out)
    print(json.dumps({"bench": bench, **figures, **(notes or {})}), file=out, flush=True)
