"""Every supported output type becomes the right constraint and parses text back to its type."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import sys
import types
import uuid
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from outlines_vllm import (
    CFG,
    Choice,
    InvalidSchemaError,
    JsonObject,
    JsonSchema,
    OutputValidationError,
    Regex,
    UnsupportedOutputTypeError,
    output_spec,
)
from outlines_vllm.types import compact_json_grammar, json_grammar


class Character(BaseModel):
    name: str
    age: int


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Pair:
    left: str
    right: str


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("output_type", "text", "expected"),
    [
        (Character, '{"name":"Ada","age":36}', Character(name="Ada", age=36)),
        (Point, '{"x":1,"y":2}', {"x": 1, "y": 2}),
        (Pair, '{"left":"l","right":"r"}', Pair("l", "r")),
        (list[Character], '[{"name":"A","age":1}]', [Character(name="A", age=1)]),
        (dict[str, int], '{"k":3}', {"k": 3}),
        (JsonSchema(SCHEMA), '{"a":1}', {"a": 1}),
        (JsonSchema(json.dumps(SCHEMA)), '{"a":1}', {"a": 1}),
        (SCHEMA, '{"a":1}', {"a": 1}),
    ],
)
def test_json_types_become_a_json_constraint_and_parse_back(output_type, text, expected):
    spec = output_spec(output_type, compact=False)
    assert spec.kind == "json"
    assert spec.constraint.structured_outputs() == {"json": spec.json_schema}
    jsonschema.Draft202012Validator.check_schema(spec.json_schema)
    assert spec.parse(text) == expected


def test_json_parse_rejects_text_that_violates_the_schema():
    with pytest.raises(OutputValidationError, match="does not match"):
        output_spec(JsonSchema(SCHEMA)).parse('{"a":"one"}')
    with pytest.raises(OutputValidationError):
        output_spec(Character).parse('{"name":"Ada"}')
    with pytest.raises(OutputValidationError, match="invalid JSON"):
        output_spec(SCHEMA).parse('{"a":')


@pytest.mark.parametrize(
    ("output_type", "choices", "text", "expected"),
    [
        (Literal["yes", "no"], ["yes", "no"], "no", "no"),
        (Literal[1, 2], ["1", "2"], "2", 2),
        (Color, ["red", "green"], "green", Color.GREEN),
        (Choice(["a", "b"]), ["a", "b"], "a", "a"),
    ],
)
def test_literals_enums_and_choice_use_vllm_native_choice(output_type, choices, text, expected):
    spec = output_spec(output_type)
    assert spec.constraint.structured_outputs() == {"choice": choices}
    assert spec.parse(text) == expected
    with pytest.raises(OutputValidationError):
        spec.parse("maybe")


@pytest.mark.parametrize(
    ("output_type", "text", "expected"),
    [
        (int, "-42", -42),
        (float, "3.25", 3.25),
        (float, "1e3", 1000.0),
        (bool, "True", True),
        (dt.date, "2026-11-29", dt.date(2026, 11, 29)),
        (dt.time, "12:30:00", dt.time(12, 30)),
        (dt.datetime, "2026-11-29T12:30:00", dt.datetime(2026, 11, 29, 12, 30)),
        (
            uuid.UUID,
            "12345678-1234-1234-1234-123456789abc",
            uuid.UUID("12345678-1234-1234-1234-123456789abc"),
        ),
    ],
)
def test_simple_types_are_regexes_that_parse_back(output_type, text, expected):
    spec = output_spec(output_type)
    assert spec.kind == "regex"
    assert spec.parse(text) == expected
    with pytest.raises(OutputValidationError):
        spec.parse("not " + text)


def test_integers_have_bounded_digits_so_a_number_cannot_run_to_max_tokens():
    spec = output_spec(int)
    assert spec.parse("1" * 16) == int("1" * 16)
    with pytest.raises(OutputValidationError):
        spec.parse("1" * 17)


def test_regex_cfg_and_json_object():
    assert output_spec(Regex(r"[a-z]+")).constraint.structured_outputs() == {"regex": "[a-z]+"}
    assert output_spec(Regex(r"[a-z]+")).parse("abc") == "abc"
    lark = 'start: "yes" | "no"'
    assert output_spec(CFG(lark)).constraint.structured_outputs() == {"grammar": lark}
    spec = output_spec(JsonObject, compact=False)
    assert spec.constraint.structured_outputs() == {"json_object": True}
    compact = output_spec(JsonObject).constraint.structured_outputs()
    assert compact == {"grammar": compact_json_grammar({"type": "object"})}
    assert spec.parse('{"any": [1]}') == {"any": [1]}
    with pytest.raises(OutputValidationError, match="not a JSON object"):
        spec.parse("[1]")


def test_free_text_has_no_constraint():
    for output_type in (None, str):
        spec = output_spec(output_type)
        assert spec.constraint is None and spec.kind == "none"
        assert spec.parse(" any text ") == " any text "


def test_compact_json_is_a_whitespace_free_grammar_but_still_kind_json():
    spec = output_spec(Character)
    assert spec.kind == "json"
    fields = spec.constraint.structured_outputs()
    assert list(fields) == ["grammar"]
    assert fields["grammar"] == compact_json_grammar(Character.model_json_schema())
    free = "[ \\n\\r\\t]*"  # xgrammar's free JSON whitespace; compact keeps it only in a lookahead
    assert fields["grammar"].count(free) == 1
    assert output_spec(Character, compact=False).constraint.structured_outputs() == {
        "json": Character.model_json_schema()
    }


def test_whitespace_pattern_replaces_free_whitespace_in_the_grammar():
    grammar = output_spec(Character, whitespace_pattern="[ ]?").constraint.structured_outputs()["grammar"]
    assert "([ ]?)" in grammar and "[ \\n\\r\\t]*" not in grammar
    assert grammar == json_grammar(Character.model_json_schema(), "[ ]?")
    with pytest.raises(InvalidSchemaError, match="whitespace_pattern"):
        output_spec(Character, whitespace_pattern=r"(\s").constraint.structured_outputs()


def test_additional_properties_false_closes_every_object():
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"x": {"type": "string"}}}},
    }
    closed = output_spec(schema, additional_properties=False).json_schema
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is untouched


def test_outlines_type_objects_are_read_by_duck_typing():
    module = types.ModuleType("outlines.types.dsl")

    def outlines_type(name, **fields):
        cls = type(name, (), {"__module__": module.__name__})
        obj = cls()
        obj.__dict__.update(fields)
        return obj

    assert output_spec(outlines_type("JsonSchema", schema=json.dumps(SCHEMA))).json_schema == SCHEMA
    assert output_spec(outlines_type("Regex", pattern="[0-9]+")).constraint.value == "[0-9]+"
    assert output_spec(outlines_type("CFG", definition="start: 'a'")).kind == "grammar"
    assert output_spec(outlines_type("Choice", items=["a", "b"])).constraint.value == ["a", "b"]
    spaced = outlines_type("JsonSchema", schema=json.dumps(SCHEMA), whitespace_pattern="[ ]?")
    assert output_spec(spaced).constraint.whitespace_pattern == "[ ]?"


def test_other_outlines_dsl_terms_become_regexes_through_outlines_to_regex(monkeypatch):
    dsl = types.ModuleType("outlines.types.dsl")
    dsl.to_regex = lambda term: f"({term.left}|{term.right})"
    monkeypatch.setitem(sys.modules, "outlines.types.dsl", dsl)
    term = type("Alternatives", (), {"__module__": "outlines.types.dsl"})()
    term.left, term.right = "a", "b"
    spec = output_spec(term)
    assert spec.constraint.structured_outputs() == {"regex": "(a|b)"}
    assert spec.parse("b") == "b"


def test_bad_schemas_and_regexes_are_named_errors_before_any_request():
    with pytest.raises(InvalidSchemaError):
        JsonSchema("{not json")
    with pytest.raises(InvalidSchemaError):
        output_spec({"type": 12})
    with pytest.raises(InvalidSchemaError):
        output_spec(Regex("("))
    with pytest.raises(InvalidSchemaError, match="grammar"):
        output_spec({"type": "object", "properties": {"a": {"$ref": "#/definitions/nope"}}})


def test_pydantic_refusals_become_unsupported_type_errors():
    import typing

    class Old(typing.TypedDict):  # pydantic needs typing_extensions.TypedDict before Python 3.12
        x: int

    import sys

    if sys.version_info >= (3, 12):
        pytest.skip("typing.TypedDict is supported on Python >= 3.12")
    with pytest.raises(UnsupportedOutputTypeError, match="typing_extensions"):
        output_spec(Old)


@pytest.mark.parametrize("output_type", [object, 3.5, bytes, Literal[()]])
def test_unsupported_types_raise_a_type_error_naming_the_type_and_the_options(output_type):
    with pytest.raises(TypeError) as info:
        output_spec(output_type)
    assert isinstance(info.value, UnsupportedOutputTypeError)
    if output_type is object:
        assert "object" in str(info.value) and "Pydantic model" in str(info.value)


def test_compact_json_accepts_exactly_the_compact_text_with_bounded_numbers():
    accepts = pytest.importorskip("xgrammar.testing")._is_grammar_accept_string
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "x": {"type": "number"}},
        "required": ["n", "x"],
    }
    grammar = output_spec(schema).constraint.structured_outputs()["grammar"]
    assert accepts(grammar, '{"n":-1234567890123456,"x":1.5e10}')
    assert not accepts(grammar, '{"n": 1,"x":1}')  # no free whitespace
    assert not accepts(grammar, '{"n":12345678901234567,"x":1}')  # 17 digits: a runaway number
    spaced = output_spec(schema, whitespace_pattern="[ ]?").constraint.structured_outputs()["grammar"]
    assert accepts(spaced, '{ "n": 1, "x": 2 }')
    assert not accepts(spaced, '{\n"n":1,"x":2}')


def test_compact_json_keeps_the_models_field_order():
    accepts = pytest.importorskip("xgrammar.testing")._is_grammar_accept_string
    grammar = output_spec(Character).constraint.structured_outputs()["grammar"]
    assert accepts(grammar, '{"name":"Ada","age":36}')  # declared order, as Pydantic writes it
    assert not accepts(grammar, '{"age":36,"name":"Ada"}')
