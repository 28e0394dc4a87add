"""JSON Schema, in OpenAPI 3.1's dialect, from typed models (TypedDicts and their annotations).

A model is a ``TypedDict``: its keys' Python types give the JSON types,
``Required`` / ``NotRequired`` give ``required``, its docstring the
description, and ``Annotated`` metadata the rest::

    class Health(TypedDict):
        \"\"\"Liveness.\"\"\"                                          # description
        workers: Annotated[int, Doc("pool threads"), Schema(minimum=1)]

- ``Doc(text)``: a key's description (``$name`` in it is replaced by a ``Given`` text).
- ``Schema(**keywords)``: JSON Schema keywords, as they are (``minimum``, ``format``...).
- ``SchemaOf(type)``: the schema of another type, for a key whose Python type must stay
  looser than what it holds (its value comes from code that is not typed yet).
- ``Given(name)``: a value known only when the document is built (the registered
  steps, the configured bounds), anywhere in ``Schema``'s keywords.
- ``ExtraKeys(type)``: on a model, the type of the keys it does not declare
  (``additionalProperties``); without it, other keys are allowed and unspecified.

Types: ``str`` string, ``int`` integer, ``float`` number, ``bool`` boolean, ``None``
null, ``bytes`` a binary string, ``Literal`` const or enum, an ``Enum`` the enum of its
values, ``list[X]`` array, ``dict[str, X]`` object of X, ``X | None`` nullable
(``"type": [..., "null"]``), ``Any`` anything, and a model a ``$ref`` to its component.
"""

from __future__ import annotations

import enum
import string
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Required, Union

REF_PREFIX = "#/components/schemas/"

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    bytes: {"type": "string", "format": "binary"},
}
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


@dataclass(frozen=True)
class Doc:
    """A key's description."""

    text: str


@dataclass(frozen=True, eq=False)  # hashed by identity, as Annotated needs: keywords hold lists
class Schema:
    """JSON Schema keywords added to a key's schema as they are."""

    keywords: dict[str, Any]

    def __init__(self, **keywords: Any) -> None:
        object.__setattr__(self, "keywords", keywords)


@dataclass(frozen=True)
class SchemaOf:
    """Describe a key by another type's schema (its Python type is looser than its value)."""

    type: Any


@dataclass(frozen=True)
class Given:
    """A value of a Schema keyword that the document's builder gives (``given[name]``)."""

    name: str


@dataclass(frozen=True)
class ExtraKeys:
    """The type of a model's undeclared keys (JSON Schema's ``additionalProperties``)."""

    type: Any


@dataclass
class _Generator:
    names: dict[Any, str]  # model: its component's name
    given: Mapping[str, Any]
    texts: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.texts = {name: value for name, value in self.given.items() if isinstance(value, str)}

    def model(self, model: Any) -> dict[str, Any]:
        """The schema of a model (a TypedDict, possibly Annotated with ExtraKeys or Schema)."""
        metadata: tuple[Any, ...] = ()
        if typing.get_origin(model) is Annotated:
            model, *rest = typing.get_args(model)
            metadata = tuple(rest)
        if not typing.is_typeddict(model):
            raise TypeError(f"{model!r} is not a TypedDict")
        hints = typing.get_type_hints(model, include_extras=True)
        schema: dict[str, Any] = {"type": "object"}
        if model.__doc__:
            schema["description"] = " ".join(model.__doc__.split())
        required = [key for key, hint in hints.items() if _required(model, key, hint)]
        if required:
            schema["required"] = required
        schema["properties"] = {key: self.type(hint) for key, hint in hints.items()}
        for item in metadata:
            if isinstance(item, ExtraKeys):
                schema["additionalProperties"] = self.type(item.type)
        return self._annotate(schema, metadata)

    def type(self, hint: Any) -> dict[str, Any]:
        """The schema of a type hint."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (Required, NotRequired):
            return self.type(args[0])
        if origin is Annotated:
            base, *metadata = args
            replacement = next((m.type for m in metadata if isinstance(m, SchemaOf)), base)
            return self._annotate(self.type(replacement), metadata)
        if hint is Any:
            return {}
        if hint in _SIMPLE:
            return dict(_SIMPLE[hint])
        if typing.is_typeddict(hint):
            if hint not in self.names:
                raise ValueError(f"{hint.__name__} is referred to but is not a component")
            return {"$ref": REF_PREFIX + self.names[hint]}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum([member.value for member in hint])
        if origin is Literal:
            return _enum(list(args))
        if origin is list:
            return {"type": "array", "items": self.type(args[0])}
        if origin is dict:
            values = self.type(args[1])
            return {"type": "object", **({"additionalProperties": values} if values else {})}
        if origin in (Union, types.UnionType):
            return self._union(args)
        raise TypeError(f"no JSON Schema for {hint!r}")

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        others = [arg for arg in args if arg is not type(None)]
        if len(others) != 1:
            return {"oneOf": [self.type(arg) for arg in args]}
        schema = self.type(others[0])
        if len(others) == len(args):
            return schema
        if "const" in schema:
            schema["enum"] = [schema.pop("const")]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        kind = schema.get("type")
        if isinstance(kind, str):
            schema["type"] = [kind, "null"]
        elif isinstance(kind, list):
            schema["type"] = [*kind, "null"]
        else:  # a $ref, or a schema without a type
            description = schema.pop("description", None)
            schema = {"oneOf": [{"type": "null"}, schema]}
            if description:
                schema["description"] = description
        return schema

    def _annotate(self, schema: dict[str, Any], metadata: typing.Iterable[Any]) -> dict[str, Any]:
        for item in metadata:
            if isinstance(item, Doc):
                schema["description"] = string.Template(item.text).substitute(self.texts)
            elif isinstance(item, Schema):
                schema.update(self._resolve(item.keywords))
        return schema

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, Given):
            return self.given[value.name]
        if isinstance(value, dict):
            return {key: self._resolve(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._resolve(item) for item in value]
        return value


def _required(model: Any, key: str, hint: Any) -> bool:
    """Whether a model's key is required: Required/NotRequired first, else the class's totality.

    (On Python 3.11 a TypedDict misses Required/NotRequired in string annotations, as
    ``from __future__ import annotations`` makes them; the hints resolved here have them.)
    """
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is NotRequired:
        return False
    return typing.get_origin(hint) is Required or key in model.__required_keys__


def _enum(values: list[Any]) -> dict[str, Any]:
    kinds = {_JSON_TYPES.get(type(value)) for value in values}
    schema: dict[str, Any] = {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}
    if len(values) == 1:
        schema["const"] = values[0]
    else:
        schema["enum"] = values
    return schema


def component_schemas(
    models: Mapping[str, Any], *, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return each model's JSON Schema by its component name; models refer to each other by $ref.

    ``given`` holds the values of the models' ``Given`` keywords, and the texts
    their ``Doc``'s ``$name`` stand for.
    """
    names = {_bare(model): name for name, model in models.items()}
    generator = _Generator(names, given or {})
    return {name: generator.model(model) for name, model in models.items()}


def type_schema(hint: Any, *, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the JSON Schema of a type that refers to no model (for parameters and the like)."""
    return _Generator({}, given or {}).type(hint)


def _bare(model: Any) -> Any:
    return typing.get_args(model)[0] if typing.get_origin(model) is Annotated else model
