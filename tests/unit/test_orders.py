"""Signed orders: every refusal reason, and the agent's executor with a persisted guard."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_agent.orders import FileReplayGuard, OrderExecutor
from aegis_protocol.orders import (
    MemoryReplayGuard,
    Order,
    OrderRefused,
    SignedOrder,
    new_order,
    sign_order,
    verify_ack,
    verify_order,
)

pytestmark = pytest.mark.unit

CONTROLLER = Ed25519PrivateKey.generate()
NODE = Ed25519PrivateKey.generate()
EDGE = "10.0.0.1 -> 10.0.0.2 tcp/22"


def _signed(kind: str = "grant", args: dict | None = None, node: str = "n1", **kw) -> SignedOrder:
    order = new_order(node, kind, {"edge": EDGE} if args is None else args, **kw)  # type: ignore[arg-type]
    return sign_order(CONTROLLER, order)


def _refusal(signed: SignedOrder | dict, guard=None, now: int | None = None, key=None) -> str:
    with pytest.raises(OrderRefused) as err:
        verify_order(signed, (key or CONTROLLER).public_key(), "n1", now,
                     guard or MemoryReplayGuard())
    return err.value.reason


def test_a_good_order_verifies_once() -> None:
    guard = MemoryReplayGuard()
    signed = _signed()
    assert verify_order(signed, CONTROLLER.public_key(), "n1", None, guard).kind == "grant"
    assert _refusal(signed, guard) == "replayed"


def test_forged_orders_are_refused() -> None:
    signed = _signed()
    edited = signed.model_dump(mode="json")
    edited["order"]["args"]["edge"] = "0.0.0.0/0 -> 10.0.0.2 tcp/22"
    assert _refusal(edited) == "forged"
    other = Ed25519PrivateKey.generate()
    assert _refusal(sign_order(other, signed.order)) == "forged"  # someone else's key
    relabelled = signed.model_copy(update={"signature": sign_order(other, signed.order).signature})
    assert _refusal(relabelled) == "forged"  # right key id, wrong signature


def test_misaddressed_expired_and_future_orders_are_refused() -> None:
    assert _refusal(_signed(node="n2")) == "misaddressed"
    now = int(time.time())
    assert _refusal(_signed(now=now - 1000, lifetime=60)) == "expired"
    assert _refusal(_signed(now=now + 600)) == "expired"  # from the future
    assert _refusal(_signed(lifetime=86400)) == "expired"  # too long-lived


@pytest.mark.parametrize("args", [{}, {"edge": "nonsense"}, {"edge": EDGE, "rm": "-rf"},
                                  {"edge": 5}])
def test_malformed_orders_are_refused(args: dict) -> None:
    raw = Order(node_id="n1", kind="grant", args=args, issued_at=int(time.time()),
                expires_at=int(time.time()) + 60)
    assert _refusal(sign_order(CONTROLLER, raw)) == "malformed"
    assert _refusal({"order": {"kind": "grant"}, "signature": "x"}) == "malformed"


def test_a_refused_forgery_does_not_burn_the_genuine_nonce() -> None:
    guard = MemoryReplayGuard()
    signed = _signed()
    forged = signed.model_copy(update={"signature": sign_order(NODE, signed.order).signature})
    assert _refusal(forged, guard) == "forged"
    assert verify_order(signed, CONTROLLER.public_key(), "n1", None, guard)


def test_executor_acks_and_its_guard_survives_a_restart(tmp_path: Path) -> None:
    done: list[dict] = []

    def grant(args: dict) -> str:
        done.append(args)
        return f"granted {args['edge']}"

    def executor() -> OrderExecutor:
        return OrderExecutor("n1", CONTROLLER.public_key(), NODE,
                             FileReplayGuard(tmp_path / "nonces.json"), {"grant": grant})

    signed = _signed()
    first = executor().execute(signed)
    ack = verify_ack(first, NODE.public_key())
    assert ack.status == "done" and ack.order_id == signed.order.id and done == [{"edge": EDGE}]
    # the same order again, in a new process (its acknowledgment was lost): not run
    # again, and answered with the original acknowledgment, not "refused: replayed"
    again = executor().execute(signed)
    assert again == first and verify_ack(again, NODE.public_key()).status == "done"
    assert len(done) == 1
    failed = executor().execute(_signed("revoke", {"edge": EDGE}))
    assert failed.ack.status == "failed" and "cannot execute revoke" in failed.ack.detail
    edited = first.model_copy(update={"ack": first.ack.model_copy(update={"status": "failed"})})
    with pytest.raises(OrderRefused, match="forged"):
        verify_ack(edited, NODE.public_key())


def test_a_lost_nonce_file_refuses_older_orders(tmp_path: Path) -> None:
    old = _signed(now=int(time.time()) - 5)
    (tmp_path / "nonces.json").write_text("{not json")
    guard = FileReplayGuard(tmp_path / "nonces.json")
    assert (tmp_path / "nonces.json.corrupt").exists()
    assert _refusal(old, guard) == "replayed"  # may have been executed before the loss
    fresh = _signed(now=int(time.time()) + 1)
    assert verify_order(fresh, CONTROLLER.public_key(), "n1", None, guard)


@pytest.mark.parametrize(("kind", "args", "expected"), [
    ("grant", {}, "grant needs the argument 'edge'"),
    ("grant", {"edge": EDGE, "rm": "-rf"}, "grant takes no argument(s) rm; allowed: edge, "
                                           "idle, ttl"),
    ("grant", {"edge": EDGE, "ttl": True}, "grant: argument 'ttl' has the wrong type"),
    ("grant", {"edge": "10.0.0.1 => 10.0.0.2"}, "grant: bad edge '10.0.0.1 => 10.0.0.2': "
                                                "missing '->'"),
    ("quarantine", {"level": "total"}, "quarantine: level must be one of soft, hard"),
    ("rotate", {"what": "disk"}, "rotate: what must be one of certificate, secrets"),
    ("release-cgroup", {}, "release-cgroup needs the argument 'cgroup'"),
    ("release", {"verb": "grant"}, "release takes no argument(s) verb"),
])
def test_order_args_are_checked_by_the_verb_models(kind: str, args: dict,
                                                   expected: str) -> None:
    with pytest.raises(OrderRefused) as err:
        new_order("n1", kind, args)  # type: ignore[arg-type]
    assert err.value.reason == "malformed" and expected in err.value.detail, err.value.detail


def test_enforcement_order_kinds_run_through_one_enforcement(tmp_path: Path) -> None:
    from aegis_agent.enforcement import Enforcement
    from aegis_agent.orders import order_handlers

    recorded: list = []
    handlers = order_handlers(Enforcement(None, None, None, recorded.extend))
    assert set(handlers) == {"grant", "revoke", "quarantine", "release", "release-cgroup",
                             "segment-policy"}
    ex = OrderExecutor("n1", CONTROLLER.public_key(), NODE,
                       FileReplayGuard(tmp_path / "nonces.json"), handlers)
    ack = ex.execute(_signed("release-cgroup", {"cgroup": "/sys/fs/cgroup/x"})).ack
    assert ack.status == "failed" and "the connect monitor is not running" in ack.detail
    ack = ex.execute(_signed("grant")).ack
    assert ack.status == "failed" and "segmentation is off" in ack.detail
    assert recorded == []  # nothing was done, so nothing is recorded
