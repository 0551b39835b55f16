"""Compact JSON on real servers: ours (xgrammar, whitespace disabled engine-wide) and a plain vLLM
server with another backend (guidance), where only the request can make JSON compact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import openai
import pytest
from pydantic import BaseModel, Field

from outlines_vllm import from_vllm, output_spec

# Both forms of compact JSON: an exact regex, and the schema itself.
REGEX_FORM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
}
# A format a regex does not state keeps this one a schema (no number in it: a float's digits may
# run on to max_tokens at temperature 0.8, which is a truncation, not a whitespace question).
SCHEMA_FORM = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "server": {"type": "string", "format": "ipv4"},
    },
    "required": ["city", "server"],
}


class Pet(BaseModel):
    name: str = Field(max_length=20)
    legs: int = Field(ge=0, le=8)
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)


def _is_compact(text: str) -> bool:
    return text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


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
    model = from_vllm(openai_client)
    texts = model.batch(
        ["Describe one example as JSON."] * 3, schema, max_tokens=80, temperature=0.8, progress=False
    )
    for text in texts:
        assert _is_compact(text), text
        output_spec(schema).parse(text)


@pytest.mark.parametrize(
    "schema", [REGEX_FORM, SCHEMA_FORM, Pet], ids=["regex-form", "schema-form", "pydantic"]
)
def test_json_is_compact_on_a_plain_guidance_server(guidance_server, schema):
    client = openai.OpenAI(base_url=guidance_server.base_url + "/v1", api_key="-", max_retries=0)
    model = from_vllm(client)
    texts = model.batch(
        ["Describe one example as JSON."] * 3, schema, max_tokens=80, temperature=0.8, progress=False
    )
    for text in texts:
        assert _is_compact(text), text
        output_spec(schema).parse(text)


def test_the_plain_server_pads_json_the_client_does_not_make_compact(guidance_server):
    """The control: the same server lets whitespace through when asked with compact=False."""
    client = openai.OpenAI(base_url=guidance_server.base_url + "/v1", api_key="-", max_retries=0)
    spec = output_spec(REGEX_FORM, compact=False)
    texts = from_vllm(client).batch(
        ["Describe one example as JSON."] * 4, spec, max_tokens=120, temperature=0.8, progress=False,
        return_exceptions=True,
    )  # fmt: skip
    assert any(isinstance(t, str) and not _is_compact(t) for t in texts), texts
