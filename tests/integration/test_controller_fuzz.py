"""API fuzzing: schemathesis generates requests from the controller's OpenAPI document
(valid and invalid bodies) against the real app on a real SQLite database and ledger,
first with no client identity, then over mutual TLS to a live controller with an enrolled
node's certificate and with an operator's, so the requests reach the service logic.
No request may produce a 5xx; malformed requests must get a 4xx with a message."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from aegis_controller.api.app import create_app
from aegis_controller.api.limits import policy_for
from aegis_controller.domain import open_controller
from aegis_controller.ledger import init_keys
from aegis_controller.settings import Settings
from aegis_protocol import routes
from harness_controller import Server, controller_server, enroll, new_node, operator_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    state: Path = tmp_path_factory.mktemp("controller")
    init_keys(state / "keys")
    controller = open_controller(Settings.resolve(
        state, f"sqlite:///{state / 'controller.db'}", state / "ledger.anchor.json"))
    controller.enrollment.issue_token("fuzz1", 600)
    # both positive (schema-valid) and negative (schema-violating) requests
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all", "max-examples": 60}})
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(controller), config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case: schemathesis.Case) -> None:
    response = case.call()
    seen.add((case.path, response.status_code))
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail, response.text


seen: set[tuple[str, int]] = set()


def test_the_fuzzer_reached_the_refusal_paths() -> None:
    """The fuzz run above got real 4xx answers (validation, missing identity)."""
    if not seen:
        pytest.skip("run together with the fuzz test")
    codes = {code for _p, code in seen}
    assert 422 in codes and 401 in codes, seen



# -- with a client identity (issue 12) ---------------------------------------------------
# The same generated requests over real mutual TLS to a live `aegis-controller serve`, once
# with an enrolled node's certificate and once with an operator's, so that they get past
# the identity checks into the service logic. Half of the generated node ids (body and
# path) and order ids are replaced by the enrolled node's id and a real pending order's, so
# the "right node" branches are reached as well as the "another node" refusals.

#: Answers that never reached the service: validation, missing identity, wrong method,
#: body too large.
NOT_REACHED = {400, 401, 405, 413, 422}
NODE_ROUTES = {("POST", routes.EVENTS), ("POST", routes.CERTIFICATE), ("GET", routes.NODE_SELF),
               ("GET", routes.ATTEST_CHALLENGE), ("POST", routes.ATTEST),
               ("POST", routes.HEARTBEAT), ("GET", routes.ORDERS), ("POST", routes.ORDER_ACK)}
OPERATOR_ROUTES = {("PUT", routes.NODE_PROFILE), ("POST", routes.ORDERS)}


@dataclass
class Identity:
    session: requests.Session
    node_id: str
    order_id: str


@dataclass
class Live:
    server: Server
    node: Identity
    operator: Identity
    seen: dict[str, Counter[tuple[str, str, int]]]


@pytest.fixture(scope="module")
def live(run_prefix: str) -> Iterator[Live]:
    with controller_server(f"{run_prefix}fuzz", None) as srv:
        node = new_node(srv, "fuzz-node")
        assert enroll(srv, node, srv.token("fuzz-node")).status_code == 200
        with operator_client(srv, "fuzzer") as op:
            made = op.post(routes.ORDERS, json={"node_id": "fuzz-node", "kind": "attest",
                                                "args": {"reason": "fuzz"}, "lifetime": 3600})
        assert made.status_code == 201, made.text
        order_id = made.json()["order"]["id"]

        def session(cert: Path, key: Path) -> requests.Session:
            s = requests.Session()
            s.cert, s.verify = (str(cert), str(key)), str(srv.state / "ca" / "ca.pem")
            return s

        ops = srv.state / "ops"
        with session(node.cert_file, node.key_file) as as_node, \
                session(ops / "operator-fuzzer.pem", ops / "operator-fuzzer.key") as as_op:
            yield Live(srv, Identity(as_node, "fuzz-node", order_id),
                       Identity(as_op, "fuzz-node", order_id),
                       {"node": Counter(), "operator": Counter()})


@pytest.fixture(scope="module")
def identity_schema(live: Live) -> schemathesis.BaseSchema:
    doc = httpx.get(f"{live.server.url}/openapi.json", verify=live.server.ca).json()
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all", "max-examples": 40}})
    return schemathesis.openapi.from_dict(doc, config=config)


live_api = schemathesis.pytest.from_fixture("identity_schema")


def _aim(case: schemathesis.Case, who: Identity) -> None:
    """Point half of the cases (by a stable coin) at the identity's own node and order."""
    coin = zlib.crc32(repr((case.path_parameters, case.body)).encode()) % 2
    if not coin:
        return
    if isinstance(case.body, dict) and isinstance(case.body.get("node_id"), str):
        case.body["node_id"] = who.node_id
    for name, value in (("node_id", who.node_id), ("order_id", who.order_id)):
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value


def _body_size(case: schemathesis.Case, base_url: str) -> int:
    """The size of the body the case sends, as its transport encodes it."""
    kw = case.as_transport_kwargs(base_url=base_url)
    prepared = requests.Request(**{k: kw[k] for k in ("method", "url", "headers", "params",
                                                      "json", "data") if k in kw}).prepare()
    body = prepared.body or b""
    return len(body.encode() if isinstance(body, str) else body)


def _call(case: schemathesis.Case, live: Live, as_: str) -> None:
    who = live.node if as_ == "node" else live.operator
    _aim(case, who)
    try:
        response = case.call(base_url=live.server.url, session=who.session, timeout=30,
                             verify=who.session.verify, cert=who.session.cert)
    except requests.ConnectionError:
        # A body over its route's limit is refused before it is read (413, then the
        # connection closes): a client still sending meets the closed connection instead.
        size, limit = _body_size(case, live.server.url), policy_for(case.formatted_path)
        assert size > limit.body_limit, f"{case.method} {case.path} as {as_}: dropped"
        live.seen[as_][(case.method.upper(), case.path, 413)] += 1
        return
    live.seen[as_][(case.method.upper(), case.path, response.status_code)] += 1
    assert response.status_code < 500, f"{case.method} {case.path} as {as_}: {response.text}"
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail, response.text


@live_api.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_from_an_enrolled_node_makes_the_api_fail(case: schemathesis.Case,
                                                             live: Live) -> None:
    _call(case, live, "node")


@live_api.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_from_an_operator_makes_the_api_fail(case: schemathesis.Case,
                                                        live: Live) -> None:
    _call(case, live, "operator")


def _reached(seen: Counter[tuple[str, str, int]], route: tuple[str, str]) -> set[int]:
    return {code for (method, path, code) in seen if (method, path) == route} - NOT_REACHED


def test_the_fuzzer_reached_the_service_logic_with_an_identity(live: Live) -> None:
    """Every node route answered the node, and every operator route the operator, at least
    once with something other than a validation or identity refusal."""
    if not live.seen["node"] or not live.seen["operator"]:
        pytest.skip("run together with the identity fuzz tests")
    for as_, owned in (("node", NODE_ROUTES), ("operator", OPERATOR_ROUTES)):
        codes = {route: sorted({c for (m, p, c) in live.seen[as_] if (m, p) == route})
                 for route in owned}
        print(f"fuzz as {as_}: status codes per route {codes}")
        missing = [route for route in owned if not _reached(live.seen[as_], route)]
        assert not missing, f"as {as_}, these routes never got past validation: {codes}"
