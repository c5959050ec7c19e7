"""The controller's HTTP routes: written once, used by the API (``api/app.py``) and by
every client (the agent's uplink, benchmarks, tests), so the two sides cannot drift.

Paths with a parameter are templates for FastAPI (``ORDER_ACK``) and have a function
that fills them for a client (``order_ack(order_id)``).
"""

from __future__ import annotations

ENROLL = "/v1/enroll"
EVENTS = "/v1/events"
CERTIFICATE = "/v1/certificate"
NODE_SELF = "/v1/nodes/self"
ATTEST_CHALLENGE = "/v1/attest/challenge"
ATTEST = "/v1/attest"
HEARTBEAT = "/v1/heartbeat"
NODE_PROFILE = "/v1/nodes/{node_id}/profile"
ORDERS = "/v1/orders"
ORDER_ACK = "/v1/orders/{order_id}/ack"


def node_profile(node_id: str) -> str:
    return NODE_PROFILE.format(node_id=node_id)


def order_ack(order_id: object) -> str:
    return ORDER_ACK.format(order_id=order_id)
