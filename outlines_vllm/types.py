"""Output types -> constraints: the one place where a user's type becomes a vLLM constraint.

``output_spec(output_type)`` returns an :class:`OutputSpec`: a :class:`Constraint` (kind +
payload, exactly what vLLM's ``structured_outputs`` / ``StructuredOutputsParams`` take) and a
parser that turns generated text back into a validated Python value. The online request
builder, the offline engine, the server's metrics labels and the benchmark's validator all read
this value; none of them looks at user types again.

Supported output types:

- ``None`` or ``str``: no constraint, the text itself.
- Pydantic models, ``TypedDict``, dataclasses, ``list[...]``/``dict[...]``/``tuple[...]`` of
  those, ``Annotated[..., Field(...)]`` (Pydantic's constraints become schema keywords), :class:`JsonSchema` (a dict or a JSON string) and a plain schema ``dict``: ``json``.
- ``Literal["a", "b"]``, ``Enum`` subclasses and :class:`Choice`: vLLM's native ``choice``.
- ``int``, ``float``, ``bool``, ``date``, ``datetime``, ``time``, ``UUID``: a ``regex`` that
  parses back to that type.
- :class:`Regex`: ``regex``. :class:`CFG`: ``grammar`` (Lark syntax works on every vLLM backend;
  xgrammar also takes GBNF/EBNF). :data:`JsonObject`: ``json_object``, any JSON object.
- Outlines' ``JsonSchema``, ``Regex``, ``CFG`` and ``Choice`` objects, read by duck typing so
  Outlines need not be installed.

Compact JSON (the default) removes the whitespace the model may otherwise pad JSON with: on
the default model it cut tokens per object from 92 to 33 and truncations from 3/32 to 0
(measured in docs/compact-json.md). How it is sent, without torch and on every backend, is
``compact.py``'s job; the constraint kind stays ``json`` either way (metrics, reports and the
``X-Outlines-Constraint`` header say ``json``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import json
import re
import sys
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .compact import compact_fields
from .errors import InvalidSchemaError, OutputValidationError, UnsupportedOutputTypeError

ConstraintKind = Literal["json", "regex", "choice", "grammar", "json_object", "structural_tag"]
# Every kind vLLM's ``structured_outputs`` takes, and the label of unconstrained requests.
CONSTRAINT_KINDS: tuple[str, ...] = typing.get_args(ConstraintKind)
NO_CONSTRAINT = "none"
# The header our clients send with every request: the constraint kind, for the server's metrics
# (the body may carry compact JSON as a regex, which is still a JSON request).
CONSTRAINT_HEADER = "X-Outlines-Constraint"
# Which Serve replica served a response (the server sets it): for operators and routing tests.
REPLICA_HEADER = "x-outlines-replica"


@dataclass(frozen=True)
class Regex:
    """Generate text that fully matches ``pattern``."""

    pattern: str


@dataclass(frozen=True)
class CFG:
    """Generate text in the language of a context-free grammar (Lark or GBNF/EBNF text)."""

    definition: str


@dataclass(frozen=True)
class Choice:
    """Generate exactly one of ``items``."""

    items: tuple[str, ...]

    def __init__(self, items: typing.Iterable[str]) -> None:
        object.__setattr__(self, "items", tuple(items))


@dataclass(frozen=True)
class JsonSchema:
    """A JSON schema given as a dict or as JSON text."""

    schema: dict[str, Any]

    def __init__(self, schema: dict[str, Any] | str) -> None:
        object.__setattr__(self, "schema", _load_schema(schema))


class _JsonObjectType:
    """Marker for "any JSON object" (vLLM's ``json_object`` mode)."""

    def __repr__(self) -> str:
        return "JsonObject"


JsonObject = _JsonObjectType()


@dataclass(frozen=True)
class Constraint:
    """A vLLM constraint: one ``kind`` and its ``value``, plus JSON whitespace options."""

    kind: ConstraintKind
    value: Any
    compact: bool = False
    whitespace_pattern: str | None = None

    def structured_outputs(self, *, engine_compact: bool = False) -> dict[str, Any]:
        """The ``structured_outputs`` fields vLLM takes, online (request body) and offline
        (``StructuredOutputsParams(**fields)``). ``engine_compact``: the engine drops free JSON
        whitespace itself (``engine_info.py``), which picks the faster compact form."""
        if self.kind == "json" and (self.compact or self.whitespace_pattern is not None):
            return compact_fields(self.value, self.whitespace_pattern, engine_compact=engine_compact)
        if self.kind == "json_object" and self.compact:
            return {"json_object": True, "disable_any_whitespace": True}
        return {self.kind: self.value}

    def fallback(self, *, engine_compact: bool = False) -> dict[str, Any] | None:
        """The fields to send when the engine refuses ``structured_outputs(engine_compact=...)``,
        or None when there is nothing else to send. Elsewhere the plain schema (the server may
        not take the compact form at all); on an engine that keeps JSON compact, the regex form:
        vLLM refuses some schemas whose keywords xgrammar would not enforce (a ``pattern`` with
        ``maxLength``, ...), and the regex states them exactly."""
        sent = self.structured_outputs(engine_compact=engine_compact)
        other = self.structured_outputs() if engine_compact else {self.kind: self.value}
        return None if other == sent else other


@dataclass(frozen=True)
class OutputSpec:
    """What an output type means to vLLM (``constraint``) and how text comes back (``parse``)."""

    constraint: Constraint | None
    parse: Callable[[str], Any] = field(repr=False)
    output_type: Any = None

    @property
    def kind(self) -> str:
        """The constraint kind, or ``"none"``: the label metrics and reports use."""
        return self.constraint.kind if self.constraint else NO_CONSTRAINT

    @property
    def json_schema(self) -> dict[str, Any] | None:
        return self.constraint.value if self.constraint and self.constraint.kind == "json" else None


# --- simple types: a regex and a converter back ------------------------------------------------

# Digits are bounded (16 significant, 3 in an exponent): a small model otherwise keeps
# emitting digits until max_tokens and the value is lost to truncation.
_INT = r"-?(0|[1-9][0-9]{0,15})"
_SIMPLE: dict[Any, tuple[str, Callable[[str], Any]]] = {
    int: (_INT, int),
    float: (_INT + r"(\.[0-9]{1,16})?([eE][-+]?[0-9]{1,3})?", float),
    bool: (r"(True|False)", lambda s: s == "True"),
    dt.date: (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", dt.date.fromisoformat),
    dt.time: (r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d", dt.time.fromisoformat),
    dt.datetime: (
        r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d",
        dt.datetime.fromisoformat,
    ),
    uuid.UUID: (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid.UUID),
}


def output_spec(
    output_type: Any,
    *,
    compact: bool = True,
    whitespace_pattern: str | None = None,
    additional_properties: bool | None = None,
) -> OutputSpec:
    """Translate ``output_type`` once into a constraint and a parser.

    ``compact`` sends JSON without free whitespace (see ``compact.py``);
    ``whitespace_pattern`` (a regex fragment such as ``[ ]?`` or ``[\\n ]{0,2}``) is the
    only whitespace allowed between JSON tokens, and overrides ``compact``;
    ``additional_properties=False`` closes every object in the schema.
    """
    if isinstance(output_type, OutputSpec):
        return output_type
    if output_type is None or output_type is str:
        return OutputSpec(None, str, output_type)
    spec = _from_outlines(output_type)
    if spec is not None and whitespace_pattern is None:  # Outlines' JsonSchema may carry one
        whitespace_pattern = getattr(output_type, "whitespace_pattern", None)
    spec = spec or _translate(output_type)
    constraint = spec.constraint
    if constraint and constraint.kind in ("json", "json_object"):
        schema = constraint.value
        if additional_properties is not None and constraint.kind == "json":
            schema = _set_additional_properties(schema, additional_properties)
        constraint = Constraint(constraint.kind, schema, compact, whitespace_pattern)
        constraint.structured_outputs()  # a whitespace_pattern that cannot apply fails here, early
        spec = dataclasses.replace(spec, constraint=constraint)
    return spec


def _translate(tp: Any) -> OutputSpec:
    origin = typing.get_origin(tp)
    if isinstance(tp, Regex):
        return _regex_spec(tp.pattern, str, tp)
    if isinstance(tp, CFG):
        return OutputSpec(Constraint("grammar", tp.definition), str, tp)
    if isinstance(tp, Choice):
        return _choice_spec({item: item for item in tp.items}, tp)
    if isinstance(tp, JsonSchema):
        return _schema_spec(tp.schema, tp)
    if isinstance(tp, dict):
        return _schema_spec(_load_schema(tp), tp)
    if tp is JsonObject:
        return OutputSpec(Constraint("json_object", True), _parse_json_object, tp)
    if origin is Literal:
        return _choice_spec(
            {str(v.value if isinstance(v, enum.Enum) else v): v for v in typing.get_args(tp)}, tp
        )
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _choice_spec({str(m.value): m for m in tp}, tp)
    if tp in _SIMPLE:
        pattern, convert = _SIMPLE[tp]
        return _regex_spec(pattern, convert, tp)
    if _is_json_type(tp):
        return _pydantic_spec(tp)
    raise UnsupportedOutputTypeError(
        f"output type {tp!r} is not supported. Use a Pydantic model, TypedDict, dataclass, "
        "list/dict of those, JsonSchema, Literal, Enum, Choice, int, float, bool, date, datetime, "
        "time, UUID, Regex, CFG, JsonObject, or None/str for free text."
    )


def _from_outlines(tp: Any) -> OutputSpec | None:
    """Outlines' own type objects, recognised without importing Outlines."""
    module = type(tp).__module__
    if module != "outlines" and not module.startswith("outlines."):
        return None
    name = type(tp).__name__
    if name == "JsonSchema":
        return _schema_spec(_load_schema(tp.schema), tp)
    if name == "Regex":
        return _regex_spec(tp.pattern, str, tp)
    if name == "CFG":
        return OutputSpec(Constraint("grammar", tp.definition), str, tp)
    if name == "Choice":
        return _choice_spec({str(item): item for item in tp.items}, tp)
    # Other terms of Outlines' regex DSL (sequences, alternatives, repetitions of Regex terms).
    to_regex = getattr(sys.modules.get("outlines.types.dsl"), "to_regex", None)
    return _regex_spec(to_regex(tp), str, tp) if to_regex else None


def _is_json_type(tp: Any) -> bool:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return True
    if _is_typeddict(tp):
        return True
    if isinstance(tp, type):
        try:
            from pydantic import BaseModel
        except ImportError:  # pragma: no cover - pydantic is a dependency
            return False
        return issubclass(tp, BaseModel)
    return (
        typing.get_origin(tp) in (list, dict, tuple, set, frozenset, typing.Union, typing.Annotated)
        or str(typing.get_origin(tp)) == "<class 'types.UnionType'>"
    )


def _is_typeddict(tp: Any) -> bool:
    """typing's and typing_extensions' TypedDicts (pydantic wants the latter before Python 3.12)."""
    import typing_extensions

    return typing.is_typeddict(tp) or typing_extensions.is_typeddict(tp)


def _pydantic_spec(tp: Any) -> OutputSpec:
    from pydantic import TypeAdapter
    from pydantic import ValidationError as PydanticValidationError

    try:
        adapter = TypeAdapter(tp)
        schema = adapter.json_schema()
    except Exception as exc:  # pydantic raises several types for unschematizable fields
        raise UnsupportedOutputTypeError(f"cannot build a JSON schema for {tp!r}: {exc}") from exc

    def parse(text: str) -> Any:
        try:
            return adapter.validate_json(text)
        except PydanticValidationError as exc:
            raise OutputValidationError(text, _first_line(exc)) from exc

    return OutputSpec(Constraint("json", schema), parse, tp)


def _schema_spec(schema: dict[str, Any], tp: Any) -> OutputSpec:
    validator = _validator(json.dumps(schema, sort_keys=True))

    def parse(text: str) -> Any:
        value = _parse_json(text)
        if error := next(iter(validator.iter_errors(value)), None):
            raise OutputValidationError(text, f"{error.message} at {error.json_path}")
        return value

    return OutputSpec(Constraint("json", schema), parse, tp)


def _regex_spec(pattern: str, convert: Callable[[str], Any], tp: Any) -> OutputSpec:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise InvalidSchemaError(f"invalid regex {pattern!r}: {exc}") from exc

    def parse(text: str) -> Any:
        if not compiled.fullmatch(text):
            raise OutputValidationError(text, f"does not fully match the regex {pattern!r}")
        try:
            return convert(text)
        except ValueError as exc:
            raise OutputValidationError(text, str(exc)) from exc

    return OutputSpec(Constraint("regex", pattern), parse, tp)


def _choice_spec(mapping: dict[str, Any], tp: Any) -> OutputSpec:
    if not mapping:
        raise UnsupportedOutputTypeError(f"{tp!r} offers no choices")

    def parse(text: str) -> Any:
        if text not in mapping:
            raise OutputValidationError(text, f"not one of the choices {list(mapping)}")
        return mapping[text]

    return OutputSpec(Constraint("choice", list(mapping)), parse, tp)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OutputValidationError(text, f"invalid JSON ({exc})") from exc


def _parse_json_object(text: str) -> Any:
    value = _parse_json(text)
    if not isinstance(value, dict):
        raise OutputValidationError(text, "not a JSON object")
    return value


def _load_schema(schema: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidSchemaError(f"JSON schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise InvalidSchemaError(f"a JSON schema must be an object, got {type(schema).__name__}")
    _validator(json.dumps(schema, sort_keys=True))
    return schema


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A jsonschema validator for ``schema_json``; raises InvalidSchemaError for a bad schema."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidSchemaError(f"invalid JSON schema: {exc.message}") from exc
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_json(schema: dict[str, Any], text: str) -> Any:
    """Parse ``text`` and validate it against ``schema``; raises OutputValidationError."""
    return _schema_spec(schema, schema).parse(text)


def _set_additional_properties(node: Any, allowed: bool) -> Any:
    """A copy of a schema in which every object states ``additionalProperties``."""
    if isinstance(node, list):
        return [_set_additional_properties(item, allowed) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _set_additional_properties(value, allowed) for key, value in node.items()}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", allowed)
    return out


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
