"""Traffic on granted edges, from the segment filter's edge states at each sweep: the
first packet on each edge with an idle timeout (a just-in-time grant), reported once as
an ``edge_used`` agent event, and the newest packet on each, which the heartbeats carry
(``edges_seen``).

    usage = GrantUsage()
    events = usage.observe(segment.edges())   # at each sweep; edge_used events
    usage.seen                                # edge -> wall-clock ns of its last packet
"""

from __future__ import annotations

import time

from aegis_protocol.events import Event, agent_event

from .bpf.segment import EdgeState

#: most edges one heartbeat carries
MAX_SEEN = 4096


class GrantUsage:
    def __init__(self) -> None:
        #: (edge, grant time) of the edges whose first packet was reported
        self._reported: set[tuple[str, int]] = set()
        #: edge -> wall-clock ns of its newest packet at the last sweep (replaced whole)
        self.seen: dict[str, int] = {}

    def observe(self, states: list[EdgeState]) -> list[Event]:
        """``edge_used`` for each granted edge that carried its first packet since the last
        sweep (``seen_by_ns``: the wall time of the newest packet by now, so the first one
        came at most a sweep earlier); a re-granted edge is reported again."""
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()
        used = {s: now_wall - (now_mono - s.last_seen_ns)
                for s in states if s.idle_ns and s.used}
        events = []
        for s, seen_ns in used.items():
            key = (str(s.edge), s.granted_ns)
            if key not in self._reported:
                self._reported.add(key)
                events.append(agent_event("edge_used", edge=str(s.edge), seen_by_ns=seen_ns))
        self._reported &= {(str(s.edge), s.granted_ns) for s in states}
        self.seen = {str(s.edge): ns for s, ns in list(used.items())[:MAX_SEEN]}
        return events
