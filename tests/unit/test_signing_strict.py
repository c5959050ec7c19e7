"""Signed messages have one encoding: the canonical form refuses non-finite numbers, and
the signed models refuse a differently typed copy (a string ``issued_at``) instead of
coercing it into something that verifies."""

from __future__ import annotations

import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError

from aegis_protocol import attestation, enrollment, orders
from aegis_protocol.orders import (
    MemoryReplayGuard,
    OrderRefused,
    new_order,
    sign_order,
    verify_order,
)
from aegis_protocol.signing import SignatureError, canonical, sign

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()
EDGE = "10.0.0.1 -> 10.0.0.2 tcp/22"


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_canonical_refuses_non_finite_numbers(number: float) -> None:
    with pytest.raises(SignatureError, match="finite"):
        canonical({"ttl": number})
    with pytest.raises(SignatureError, match="finite"):
        sign(KEY, {"ttl": number})


def test_an_order_with_an_infinite_ttl_cannot_be_signed() -> None:
    # the order model refuses a non-finite argument (pydantic's ValidationError is a
    # ValueError); were it built anyway, the canonical form refuses it too
    with pytest.raises(ValueError, match="finite"):
        sign_order(KEY, new_order("n1", "grant", {"edge": EDGE, "ttl": math.inf}))
    order = new_order("n1", "grant", {"edge": EDGE, "ttl": 1.0}).model_copy(
        update={"args": {"edge": EDGE, "ttl": math.inf}})
    with pytest.raises(ValueError, match="finite"):
        sign_order(KEY, order)


def test_a_copy_with_a_string_issued_at_does_not_verify() -> None:
    signed = sign_order(KEY, new_order("n1", "attest", {}))
    wire = json.loads(signed.model_dump_json())
    wire["order"]["issued_at"] = str(wire["order"]["issued_at"])
    with pytest.raises(OrderRefused) as err:
        verify_order(wire, KEY.public_key(), "n1", None, MemoryReplayGuard())
    assert err.value.reason == "malformed"
    with pytest.raises(ValidationError):
        orders.SignedOrder.model_validate_json(json.dumps(wire))
    # the genuine copy, from JSON and from a dict, still verifies
    assert verify_order(json.loads(signed.model_dump_json()), KEY.public_key(), "n1", None,
                        MemoryReplayGuard()).id == signed.order.id
    assert orders.SignedOrder.model_validate_json(signed.model_dump_json()) == signed


SIGNED_MODELS: list[type[BaseModel]] = [
    orders.Order, orders.SignedOrder, orders.OrderAck, orders.SignedAck,
    attestation.Challenge, attestation.Measurement, attestation.AttestationReport,
    attestation.SignedReport, enrollment.EnrollRequest, enrollment.RenewRequest]


@pytest.mark.parametrize("model", SIGNED_MODELS, ids=lambda m: m.__name__)
def test_signed_models_are_strict(model: type[BaseModel]) -> None:
    assert model.model_config.get("strict") is True, \
        f"{model.__name__} must be strict (ConfigDict(strict=True))"
