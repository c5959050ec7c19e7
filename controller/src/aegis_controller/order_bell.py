"""Waking a node's long poll for orders the moment one is made for it.

An agent asks ``GET /v1/orders?wait=S``: the answer comes at once when the node has
pending orders, else when one is made for it or after ``S`` seconds. Orders made in this
process ring the node's bell once their transaction has committed (``Orders.create_in``);
orders another process wrote (the CLI) are found by the poll's re-read every
:data:`RECHECK` seconds. The waits live on the server's event loop (no thread per
waiting node); ``ring`` may be called from any thread.

    bell = OrderBell()
    since = bell.rings("web1")              # in the route, before reading the orders
    await bell.wait("web1", since, 20.0)    # none pending: until one is made
    bell.ring("web1")                       # after an order for web1 committed
"""

from __future__ import annotations

import asyncio
import contextlib

#: Seconds between two reads of a waiting node's orders (orders made by another process).
RECHECK = 2.0


class OrderBell:
    """Per node: a count of rings and the events of its waiting polls, both touched on the
    server loop's thread only (``ring`` hands over to it). A poll takes the count before it
    reads the orders and waits for a change of it: an order that commits while the poll
    reads is not missed."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rings: dict[str, int] = {}
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def ring(self, node_id: str) -> None:
        """Wake ``node_id``'s waiting polls (none waiting: nothing happens)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake, node_id)

    def _wake(self, node_id: str) -> None:
        if node_id in self._waiting or node_id in self._rings:
            self._rings[node_id] = self._rings.get(node_id, 0) + 1
        for event in self._waiting.get(node_id, ()):
            event.set()

    def rings(self, node_id: str) -> int:
        """The node's ring count now (on the loop, before reading its orders)."""
        self._loop = asyncio.get_running_loop()
        return self._rings.setdefault(node_id, 0)

    async def wait(self, node_id: str, since: int, timeout: float) -> bool:
        """Until the node's ring count differs from ``since`` (True) or ``timeout``
        seconds pass (False)."""
        self._loop = asyncio.get_running_loop()
        if self._rings.get(node_id, 0) != since:
            return True
        event = asyncio.Event()
        self._waiting.setdefault(node_id, set()).add(event)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting[node_id]
            waiting.discard(event)
            if not waiting:
                del self._waiting[node_id]
                self._rings.pop(node_id, None)

    def waiting(self) -> int:
        """Polls waiting now."""
        return sum(len(s) for s in self._waiting.values())
