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
#: Longest ``GET ORDERS?wait=S`` a controller holds: the agent's long poll for orders
#: (answered at once when some are pending, else when one is made or after S seconds).
ORDERS_WAIT_MAX = 25.0
ORDER_ACK = "/v1/orders/{order_id}/ack"


def node_profile(node_id: str) -> str:
    return NODE_PROFILE.format(node_id=node_id)


def order_ack(order_id: object) -> str:
    return ORDER_ACK.format(order_id=order_id)


ACCESS = "/v1/access"
ACCESS_ONE = "/v1/access/{request_id}"
ACCESS_APPROVE = "/v1/access/{request_id}/approve"
ACCESS_DENY = "/v1/access/{request_id}/deny"
ACCESS_REVOKE = "/v1/access/{request_id}/revoke"


def access_one(request_id: object, verb: str | None = None) -> str:
    """``/v1/access/ID`` or, with ``verb`` (approve, deny, revoke), ``/v1/access/ID/VERB``."""
    path = ACCESS_ONE.format(request_id=request_id)
    return f"{path}/{verb}" if verb else path
