"""schemas.py: JSON Schema (OpenAPI 3.1) from TypedDicts and their Annotated metadata."""

from __future__ import annotations

import enum
from contextlib import nullcontext
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import pytest

from audioserver.schemas import (
    Doc,
    ExtraKeys,
    Given,
    Schema,
    SchemaOf,
    component_schemas,
    type_schema,
)


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(TypedDict):
    """An inner model."""

    name: str


class Outer(TypedDict):
    """An outer model,
    on two lines."""

    count: Annotated[int, Doc("how many"), Schema(minimum=0)]
    inner: Inner | None
    label: NotRequired[str]
    bound: Annotated[float, Schema(maximum=Given("top"))]
    loose: Annotated[dict[str, Any], SchemaOf(Inner)]
    text: Annotated[str, Doc("one of $names")]


class Lonely(TypedDict):
    inner: Inner


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (str, {"type": "string"}),
        (bytes, {"type": "string", "format": "binary"}),
        (float | None, {"type": ["number", "null"]}),
        (Literal["a"], {"type": "string", "const": "a"}),
        (Literal[1, 2] | None, {"type": ["integer", "null"], "enum": [1, 2, None]}),
        (Colour, {"type": "string", "enum": ["red", "blue"]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (dict[str, str], {"type": "object", "additionalProperties": {"type": "string"}}),
        (dict[str, Any], {"type": "object"}),
        (Any, {}),
        (Annotated[int | None, Doc("n")], {"type": ["integer", "null"], "description": "n"}),
    ],
)
def test_python_types_become_json_schema(hint, expected):
    assert type_schema(hint) == expected


def test_a_model_becomes_an_object_schema_with_refs_and_given_values():
    models = {"Outer": Annotated[Outer, ExtraKeys(int)], "Inner": Inner}
    schemas = component_schemas(models, given={"top": 9.5, "names": "a, b"})
    outer = schemas["Outer"]
    assert outer["description"] == "An outer model, on two lines."
    assert outer["required"] == ["count", "inner", "bound", "loose", "text"]
    assert outer["additionalProperties"] == {"type": "integer"}
    properties = outer["properties"]
    assert properties["count"] == {"type": "integer", "description": "how many", "minimum": 0}
    assert properties["inner"] == {
        "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Inner"}]
    }
    assert properties["bound"] == {"type": "number", "maximum": 9.5}
    assert properties["loose"] == {"$ref": "#/components/schemas/Inner"}
    assert properties["text"]["description"] == "one of a, b"
    assert "additionalProperties" not in schemas["Inner"]


@pytest.mark.parametrize(
    ("models", "expectation"),
    [
        ({"Lonely": Lonely, "Inner": Inner}, nullcontext()),
        ({"Lonely": Lonely}, pytest.raises(ValueError, match=r"Inner .* not a component")),
        ({"Number": int}, pytest.raises(TypeError, match="not a TypedDict")),
    ],
)
def test_every_model_referred_to_must_be_a_component(models, expectation):
    with expectation:
        component_schemas(models)
