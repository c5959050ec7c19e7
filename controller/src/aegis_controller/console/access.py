"""The Access page: pending requests (approve / deny for operators with that right) and
live grants with their time left, and recently ended ones (idle revocations among them)."""

from __future__ import annotations

import time
from typing import Any

from ..domain import Controller


def access(controller: Controller) -> dict[str, Any]:
    now = int(time.time())
    states = controller.access.visible(None)
    pending, live, ended = [], [], []
    for s in states:
        item = s.model_dump(mode="json")
        if s.status == "pending":
            pending.append(item)
        elif s.status == "granted":
            item["time_left_s"] = max(0, (s.expires_at or now) - now)
            live.append(item)
        else:
            ended.append(item)
    return {"pending": pending, "live": live, "ended": ended[:50]}
