"""Compact JSON on real servers: ours (xgrammar, whitespace disabled engine-wide, said on
``/version``: schemas go as the schema) and a plain vLLM server with another backend (guidance),
where only the request can make JSON compact (schemas go as a regex)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import openai
import pytest
from pydantic import BaseModel, Field

from outlines_vllm import ConstraintRejectedError, from_vllm, output_spec
from tests.runaway import BOUNDED, NUMBER, RUNAWAY, nested

# Both forms of compact JSON: an exact regex, and the schema itself.
REGEX_FORM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
}
# A float bound keeps this one a schema (a regex cannot state it).
SCHEMA_FORM = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "area_km2": {"type": "number", "minimum": 0.5, "maximum": 100000},
    },
    "required": ["city", "area_km2"],
    "additionalProperties": False,
}


class Pet(BaseModel):
    name: str = Field(max_length=20)
    legs: int = Field(ge=0, le=8)
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)


def _free_whitespace(text: str) -> bool:
    """Whether ``text`` (complete or cut-off JSON) has whitespace outside its strings."""
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), in_string and (escaped or char != '"')
        elif char == '"':
            in_string = True
        elif char.isspace():
            return True
    return False


def _texts(results: list) -> list[str]:
    """Every answer's text, finished or not: errors keep theirs (a number running on to
    max_tokens is a truncation, not a whitespace question)."""
    return [r if isinstance(r, str) else r.text for r in results]


def _check_compact(model, schema) -> None:
    results = model.batch(
        ["Describe one example as JSON."] * 3, schema, max_tokens=100, temperature=0.8, progress=False,
        return_exceptions=True,
    )  # fmt: skip
    assert not any(_free_whitespace(text) for text in _texts(results)), results
    done = [r for r in results if isinstance(r, str)]
    assert done, results  # at least one answer finished, and every finished one is valid
    for text in done:
        output_spec(schema).parse(text)


@pytest.fixture(scope="module")
def guidance_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A plain vLLM server on the guidance backend, whitespace left free engine-wide."""
    from outlines_vllm.launch import LocalServer

    log = tmp_path_factory.mktemp("guidance-server") / "server.log"
    with LocalServer(
        model_path,
        served_model_name="plain",
        log_path=log,
        env={"VLLM_CPU_OMP_THREADS_BIND": "1"},
        structured_outputs_config={"backend": "guidance"},
    ) as server:
        yield server


@pytest.mark.parametrize(
    "schema", [REGEX_FORM, SCHEMA_FORM, Pet], ids=["regex-form", "schema-form", "pydantic"]
)
def test_json_is_compact_on_our_server(openai_client, schema):
    _check_compact(from_vllm(openai_client), schema)


def version(server) -> dict:
    with urllib.request.urlopen(server.base_url + "/version") as answer:
        return json.load(answer)


def test_our_server_says_its_engine_is_compact_and_gets_the_schema(vllm_server, openai_client):
    assert version(vllm_server)["structured_outputs"] == {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
    model = from_vllm(openai_client)
    texts = model.batch(RUNAWAY, NUMBER, max_tokens=40, temperature=0, endpoint="completions", progress=False)
    assert model.engine_compact
    assert texts == BOUNDED  # digits bounded, as offline
    assert "json" in model._request("x", NUMBER, {}).body["extra_body"]["structured_outputs"]


def test_a_schema_our_server_refuses_as_a_schema_goes_as_its_regex(openai_client):
    """vLLM refuses schemas nested deeper than 64 JSON levels (400); the client then sends the
    schema's regex form, which states it exactly."""
    deep = nested(34)
    model = from_vllm(openai_client)
    with pytest.raises(ConstraintRejectedError, match="nested too deeply"):  # the control
        model("Fill in the JSON.", output_spec(deep, compact=False), max_tokens=200)
    value = model.parse("Fill in the JSON.", deep, max_tokens=400, temperature=0)
    for _ in range(34):
        value = value["a"]
    assert 0 <= value <= 9 and model.engine_compact


def test_a_server_whose_whitespace_is_free_gets_the_regex(guidance_server):
    assert version(guidance_server)["structured_outputs"]["disable_any_whitespace"] is False
    client = openai.OpenAI(base_url=guidance_server.base_url + "/v1", api_key="-", max_retries=0)
    model = from_vllm(client)
    assert model(RUNAWAY[0], NUMBER, max_tokens=40, temperature=0, endpoint="completions") == BOUNDED[0]
    assert not model.engine_compact
    assert list(model._request("x", NUMBER, {}).body["extra_body"]["structured_outputs"]) == ["regex"]


@pytest.mark.parametrize(
    "schema", [REGEX_FORM, SCHEMA_FORM, Pet], ids=["regex-form", "schema-form", "pydantic"]
)
def test_json_is_compact_on_a_plain_guidance_server(guidance_server, schema):
    client = openai.OpenAI(base_url=guidance_server.base_url + "/v1", api_key="-", max_retries=0)
    _check_compact(from_vllm(client), schema)


def test_the_plain_server_pads_json_the_client_does_not_make_compact(guidance_server):
    """The control: the same server lets whitespace through when asked with compact=False."""
    client = openai.OpenAI(base_url=guidance_server.base_url + "/v1", api_key="-", max_retries=0)
    spec = output_spec(REGEX_FORM, compact=False)
    texts = from_vllm(client).batch(
        ["Describe one example as JSON."] * 4, spec, max_tokens=120, temperature=0.8, progress=False,
        return_exceptions=True,
    )  # fmt: skip
    assert any(_free_whitespace(text) for text in _texts(texts)), texts
