"""Every supported output type becomes the right constraint and parses text back to its type."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import sys
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
from outlines_vllm.compact import json_regex


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
    assert compact == {"json_object": True, "disable_any_whitespace": True}
    assert spec.parse('{"any": [1]}') == {"any": [1]}
    with pytest.raises(OutputValidationError, match="not a JSON object"):
        spec.parse("[1]")


def test_free_text_has_no_constraint():
    for output_type in (None, str):
        spec = output_spec(output_type)
        assert spec.constraint is None and spec.kind == "none"
        assert spec.parse(" any text ") == " any text "


def test_compact_json_is_a_whitespace_free_regex_but_still_kind_json():
    spec = output_spec(Character)
    assert spec.kind == "json"
    fields = spec.constraint.structured_outputs()
    assert fields == {"regex": json_regex(Character.model_json_schema())}
    assert re.fullmatch(fields["regex"], '{"name":"Ada","age":36}')
    assert not re.fullmatch(fields["regex"], '{"name": "Ada", "age": 36}')
    assert output_spec(Character, compact=False).constraint.structured_outputs() == {
        "json": Character.model_json_schema()
    }
    assert spec.constraint.fallback() == {"json": Character.model_json_schema()}
    assert output_spec(Character, compact=False).constraint.fallback() is None


def test_whitespace_pattern_is_the_only_whitespace_between_tokens():
    regex = output_spec(Character, whitespace_pattern="[ ]?").constraint.structured_outputs()["regex"]
    assert re.fullmatch(regex, '{ "name": "Ada", "age": 36 }')
    assert not re.fullmatch(regex, '{\n"name":"Ada","age":36}')
    with pytest.raises(InvalidSchemaError, match="whitespace_pattern"):
        output_spec({"type": "number", "minimum": 0.5}, whitespace_pattern="[ ]?")


@pytest.mark.parametrize("output_type", [object, 3.5, bytes, Literal[()]])
def test_unsupported_types_raise_a_type_error_naming_the_type_and_the_options(output_type):
    with pytest.raises(TypeError) as info:
        output_spec(output_type)
    assert isinstance(info.value, UnsupportedOutputTypeError)
    if output_type is object:
        assert "object" in str(info.value) and "Pydantic model" in str(info.value)


def test_compact_json_accepts_exactly_the_compact_text_with_bounded_numbers():
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "x": {"type": "number"}},
        "required": ["n", "x"],
    }
    regex = output_spec(schema).constraint.structured_outputs()["regex"]
    assert re.fullmatch(regex, '{"n":-1234567890123456,"x":1.5e10}')
    assert not re.fullmatch(regex, '{"n": 1,"x":1}')  # no free whitespace
    assert not re.fullmatch(regex, '{"n":12345678901234567,"x":1}')  # 17 digits: a runaway number


@pytest.mark.parametrize(
    ("bounds", "inside", "outside"),
    [
        ({"minimum": 0, "maximum": 120}, [0, 9, 10, 99, 100, 119, 120], [-1, 121, 1000]),
        ({"minimum": -15, "maximum": -3}, [-15, -10, -9, -3], [-16, -2, 0, 3]),
        ({"exclusiveMinimum": -2, "exclusiveMaximum": 1000}, [-1, 0, 999], [-2, 1000, -10]),
        ({"minimum": 1}, [1, 7, 10**15], [0, -1]),
        ({"maximum": -1}, [-1, -(10**15)], [0, 1]),
        ({"minimum": 1.5, "maximum": 3.5}, [2, 3], [1, 4]),
    ],
)
def test_bounded_integers_are_exact_in_the_compact_regex(bounds, inside, outside):
    schema = {"type": "object", "properties": {"n": {"type": "integer", **bounds}}, "required": ["n"]}
    regex = output_spec(schema).constraint.structured_outputs()["regex"]
    for n in inside:
        assert re.fullmatch(regex, f'{{"n":{n}}}'), n
    for n in outside:
        assert not re.fullmatch(regex, f'{{"n":{n}}}'), n
    assert not re.fullmatch(regex, '{"n":007}') and not re.fullmatch(regex, '{"n":-0}')


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"x": {"type": "number", "minimum": 0}}},  # float bounds
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "additionalProperties": {"type": "string"},
        },
        {"type": "object"},  # any object: a regex can only cut its depth
        {
            "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
            "$ref": "#/$defs/n",
        },
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
        # outlines_core would keep the length and drop the pattern (or format):
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 3}}},
        {"type": "object", "properties": {"a": {"type": "string", "format": "date", "minLength": 10}}},
    ],
)
def test_schemas_a_regex_would_loosen_go_as_hinted_schemas(schema):
    fields = output_spec(schema).constraint.structured_outputs()
    assert json_regex(schema) is None
    assert fields["disable_any_whitespace"] is True
    assert fields["json"]["x-guidance"] == {
        "whitespace_flexible": False,
        "item_separator": ",",
        "key_separator": ":",
    }
    assert {k: v for k, v in fields["json"].items() if k != "x-guidance"} == schema


def _xgrammar_accepts(fields: dict, text: str) -> bool:
    """Whether vLLM's xgrammar backend, on an engine with ``disable_any_whitespace``, lets the
    model write ``text`` under these fields (compiled as vLLM 0.32 compiles them)."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgr.Grammar.from_json_schema(
        json.dumps(fields["json"]), any_whitespace=False, separators=(",", ":"), strict_mode=True
    )
    return _is_grammar_accept_string(grammar, text)


def test_on_a_compact_engine_json_goes_as_the_schema_with_its_integers_bounded():
    spec = output_spec(Character)
    fields = spec.constraint.structured_outputs(engine_compact=True)
    assert set(fields) == {"json", "disable_any_whitespace"}
    age = fields["json"]["properties"]["age"]
    assert (age["minimum"], age["maximum"]) == (-(10**16 - 1), 10**16 - 1)
    assert fields["json"]["properties"]["name"] == Character.model_json_schema()["properties"]["name"]
    assert spec.constraint.fallback() == {"json": Character.model_json_schema()}
    assert spec.constraint.fallback(engine_compact=True) == spec.constraint.structured_outputs()  # the regex
    assert output_spec({"type": "object"}).constraint.fallback(engine_compact=True) is None  # no regex form
    # What xgrammar then lets through is what the regex form lets through:
    assert _xgrammar_accepts(fields, '{"name":"Ada","age":-1234567890123456}')
    assert not _xgrammar_accepts(fields, '{"name": "Ada","age":36}')  # no free whitespace
    assert not _xgrammar_accepts(fields, '{"age":36,"name":"Ada"}')  # the model's field order
    assert not _xgrammar_accepts(fields, '{"name":"Ada","age":12345678901234567}')  # runaway digits


def test_integer_bounds_of_the_schema_stay_and_a_missing_side_is_added():
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "low": {"type": "integer", "minimum": 5},
            "both": {"type": "integer", "minimum": 0, "maximum": 9},
            "maybe": {"type": ["integer", "null"]},
            "old": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},  # draft 4: as is
            "enum": {"enum": [{"type": "integer"}]},  # data, not a schema
        },
    }
    props = output_spec(schema).constraint.structured_outputs(engine_compact=True)["json"]["properties"]
    assert props["low"] == {"type": "integer", "minimum": 5, "maximum": 10**16 - 1}
    assert props["both"] == schema["properties"]["both"]
    assert props["maybe"] == {"type": ["integer", "null"], "minimum": -(10**16 - 1), "maximum": 10**16 - 1}
    assert props["old"] == schema["properties"]["old"]
    assert props["enum"] == schema["properties"]["enum"]


def test_a_whitespace_pattern_keeps_the_regex_form_on_a_compact_engine():
    spec = output_spec(Character, whitespace_pattern="[ ]?")
    assert list(spec.constraint.structured_outputs(engine_compact=True)) == ["regex"]


def test_compact_json_keeps_the_models_field_order():
    regex = output_spec(Character).constraint.structured_outputs()["regex"]
    assert re.fullmatch(regex, '{"name":"Ada","age":36}')  # declared order, as Pydantic writes it
    assert not re.fullmatch(regex, '{"age":36,"name":"Ada"}')


def test_the_client_builds_constraints_without_torch_or_xgrammar():
    import subprocess

    code = (
        "import sys, outlines_vllm as o\n"
        "from pydantic import BaseModel\n"
        "class C(BaseModel):\n    name: str\n    age: int\n"
        "o.output_spec(C).constraint.structured_outputs()\n"
        "heavy = {'torch', 'xgrammar', 'vllm', 'ray'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
