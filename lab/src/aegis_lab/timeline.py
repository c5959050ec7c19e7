"""The demo's timeline: each step printed when it starts and when it ends, with its
measured duration, progress lines while it runs, and measured intervals (``mark``) that
come from the records themselves (kernel event times, ledger and job history); at the
end the whole story goes to a report file (JSON, and the same timeline as text)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Step:
    name: str
    started: float  # seconds since the story began
    seconds: float | None = None
    ok: bool | None = None
    detail: str = ""


@dataclass
class Timeline:
    title: str
    t0: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    steps: list[Step] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _print(self, text: str) -> None:
        print(f"[{self.now():7.1f}s] {text}", flush=True)

    def say(self, text: str) -> None:
        self._print(text)

    def progress(self, line: str) -> None:
        print(f"            {line}", flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """A timed step: ``▶`` when it starts, ``✓``/``✗`` with its duration when it ends
        (an exception marks it failed and goes on up)."""
        step = Step(name, round(self.now(), 3))
        self.steps.append(step)
        self._print(f"▶ {name}")
        start = time.monotonic()
        try:
            yield step
        except BaseException:
            step.ok = False
            raise
        finally:
            step.seconds = round(time.monotonic() - start, 3)
            if step.ok is None:
                step.ok = True
            sign = "✓" if step.ok else "✗"
            self._print(f"{sign} {name}: {step.seconds:.1f} s"
                        + (f" ({step.detail})" if step.detail else ""))

    def mark(self, name: str, value: float, unit: str, how: str) -> None:
        """A measured interval (``unit`` ms or s) and where the figure comes from."""
        self.marks.append({"name": name, "value": round(value, 3), "unit": unit, "how": how})
        self._print(f"⏱ {name}: {value:.1f} {unit}  ({how})")

    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "started_at": self.started_at, "ok": self.ok(),
                "total_s": round(self.now(), 3),
                "steps": [s.__dict__ for s in self.steps], "marks": self.marks,
                "facts": self.facts}

    def text(self) -> str:
        lines = [f"{self.title} — started {self.started_at}", ""]
        for s in self.steps:
            sign = "ok" if s.ok else "FAILED"
            secs = f"{s.seconds:8.1f} s" if s.seconds is not None else "       -"
            lines.append(f"{s.started:8.1f} s  {secs}  {sign:<6}  {s.name}"
                         + (f" — {s.detail}" if s.detail else ""))
        if self.marks:
            lines += ["", "measured:"]
            lines += [f"  {m['name']}: {m['value']} {m['unit']} ({m['how']})" for m in self.marks]
        lines += ["", f"total {self.now():.1f} s, {'all steps ok' if self.ok() else 'FAILED'}"]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """The report as JSON at ``path`` and as text beside it (``.txt``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        path.with_suffix(".txt").write_text(self.text())
        return path
