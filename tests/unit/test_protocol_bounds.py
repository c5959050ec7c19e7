"""Everything an enrolled node posts is bounded (issue 12 item 12): a scan of every model
in ``aegis_protocol.events`` finds no string, number, list or mapping without a limit, and
the limits refuse what was reproduced (a 5 MB value, a timestamp of 2^63)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from aegis_protocol import events
from aegis_protocol.events import MAX_BATCH, Event, EventBatch

pytestmark = pytest.mark.unit

MODELS = [obj for _, obj in inspect.getmembers(events, inspect.isclass)
          if issubclass(obj, BaseModel) and obj.__module__ == events.__name__]


def _unbounded(schema: Any, where: str, out: list[str]) -> list[str]:
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "string" and not ({"maxLength", "enum", "const"} & set(schema)
                                     or schema.get("format") == "uuid"):
            out.append(f"{where}: string without maxLength")
        if kind == "integer" and not {"maximum", "minimum"} <= set(schema):
            out.append(f"{where}: integer without minimum and maximum (int64)")
        if kind == "array" and "maxItems" not in schema:
            out.append(f"{where}: array without maxItems")
        if kind == "object" and "additionalProperties" in schema and schema[
                "additionalProperties"] is not False:
            if "maxProperties" not in schema:
                out.append(f"{where}: mapping without maxProperties")
            if "maxLength" not in schema.get("propertyNames", {}):
                out.append(f"{where}: mapping keys without maxLength")
        for key, value in schema.items():
            if key not in ("enum", "const", "default", "examples"):
                _unbounded(value, f"{where}.{key}", out)
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            _unbounded(value, f"{where}[{i}]", out)
    return out


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_event_model_field_is_bounded(model: type[BaseModel]) -> None:
    assert _unbounded(model.model_json_schema(), model.__name__, []) == []


def test_the_scan_finds_an_unbounded_field() -> None:
    class Loose(BaseModel):
        text: str
        n: int
        items: list[int]
        data: dict[str, str]

    found = _unbounded(Loose.model_json_schema(), "Loose", [])
    assert len(found) == 7, found  # with the list items and the mapping values


def _event(**over: Any) -> dict[str, Any]:
    return {"ts_ns": 1, "kind": "agent", "data": {"what": "x"}, **over}


@pytest.mark.parametrize(("over", "field"), [
    ({"data": {"what": "x" * (5 * 1024 * 1024)}}, "data.what"),
    ({"ts_ns": 2**63}, "ts_ns"),
    ({"ts_ns": -1}, "ts_ns"),
    ({"data": {f"k{i}": i for i in range(65)}}, "data"),
    ({"data": {"k" * 65: 1}}, "data"),
    ({"data": {"x": math.inf}}, "data.x"),
    ({"data": {"x": 2**70}}, "data"),
    ({"data": {"x": -(2**63) - 1}}, "data"),
])
def test_out_of_bounds_events_are_refused_naming_the_field(over, field) -> None:
    with pytest.raises(ValidationError) as err:
        Event.model_validate(_event(**over))
    assert any(".".join(map(str, e["loc"])).startswith(field) for e in err.value.errors()), \
        err.value


def test_a_batch_is_capped() -> None:
    with pytest.raises(ValidationError, match="at most 1000"):
        EventBatch.model_validate({"node_id": "n1", "events": [_event()] * (MAX_BATCH + 1)})
    assert len(EventBatch.model_validate(
        {"node_id": "n1", "events": [_event()] * MAX_BATCH}).events) == MAX_BATCH


def test_an_integer_outside_int64_is_refused_not_rounded_to_a_float() -> None:
    with pytest.raises(ValidationError, match=r"data\.x: integer .* outside int64"):
        Event.model_validate_json(f'{{"ts_ns": 1, "kind": "agent", "data": {{"x": {2**70}}}}}')
    assert Event.model_validate(_event(data={"x": 2**63 - 1})).data["x"] == 2**63 - 1
    assert Event.model_validate(_event(data={"x": 1.5})).data["x"] == 1.5
