"""Structured generation through the Ray ingress: concurrent requests validate and spread over
both replicas; the plain openai SDK and our online models work as against one vLLM server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.prometheus import metric_sum
from tests.ray_app import SERVED_NAME

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
AGE = r"[1-9][0-9]?"
COLORS = ["red", "green", "blue"]


class Person(BaseModel):
    name: str = Field(max_length=12)  # bounded, so small max_tokens always fit
    age: int = Field(ge=0, le=120)


def client(ray_server: Any, cls: type = openai.OpenAI, **kwargs: Any) -> Any:
    return cls(base_url=ray_server.base_url + "/v1", api_key=ray_server.api_key, max_retries=0, **kwargs)


def served_by(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for labels, value in samples.get("outlines_vllm_requests_total", []):
        if labels.get("model") == SERVED_NAME and labels.get("status") == "200" and labels.get("replica"):
            counts[labels["replica"]] = counts.get(labels["replica"], 0) + value
    return counts


async def test_concurrent_structured_requests_validate_and_use_both_replicas(ray_server: Any) -> None:
    api = client(ray_server, openai.AsyncOpenAI)
    kinds = [("json", {"json": PERSON}), ("regex", {"regex": AGE}), ("choice", {"choice": COLORS})] * 6

    async def one(kind: str, constraint: dict[str, Any]) -> tuple[str, str, str]:
        response = await api.chat.completions.create(
            model=SERVED_NAME,
            messages=[{"role": "user", "content": "Describe a person: name and age."}],
            max_tokens=40,
            temperature=0.7,
            extra_body={"structured_outputs": constraint},
        )
        choice = response.choices[0]
        return kind, choice.message.content or "", choice.finish_reason

    before = ray_server.metrics()
    results = await asyncio.gather(*(one(kind, c) for kind, c in kinds))
    for kind, text, finish in results:
        assert finish == "stop", (kind, text)
        if kind == "json":
            jsonschema.validate(json.loads(text), PERSON)
        elif kind == "regex":
            assert re.fullmatch(AGE, text), text
        else:
            assert text in COLORS
    time.sleep(3)  # replicas publish their vllm: metrics every 2 s
    after = ray_server.metrics()
    served = {r: n - served_by(before).get(r, 0) for r, n in served_by(after).items()}
    assert sum(served.values()) == len(kinds)
    assert len([r for r, n in served.items() if n > 0]) == 2, f"one replica served everything: {served}"
    engines = {
        labels["replica"]: value
        for labels, value in after["vllm:request_success_total"]
        if labels.get("finished_reason") == "stop"
    }
    assert len(engines) == 2 and all(v > 0 for v in engines.values()), engines
    for kind in ("json", "regex", "choice"):
        done = metric_sum(after, "outlines_vllm_requests_total", constraint=kind, status="200")
        assert done - metric_sum(before, "outlines_vllm_requests_total", constraint=kind, status="200") == 6
    assert metric_sum(after, "outlines_vllm_structured_output_invalid_total") == metric_sum(
        before, "outlines_vllm_structured_output_invalid_total"
    )


def test_openai_sdk_gets_what_a_single_vllm_server_gives(ray_server: Any, openai_client: Any) -> None:
    """Same greedy request to the ingress and to a plain vLLM server: same kind of response, same text."""
    ingress = client(ray_server)
    assert [m.id for m in ingress.models.list().data] == [SERVED_NAME]
    request = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Name a color."}],
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"structured_outputs": {"choice": COLORS}},
    }
    ours, theirs = (
        ingress.chat.completions.create(**request),
        openai_client.chat.completions.create(**request),
    )
    assert type(ours) is type(theirs) and ours.choices[0].message.content == theirs.choices[0].message.content
    completion = {
        "model": SERVED_NAME,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    ours_c, theirs_c = (
        ingress.completions.create(**completion),
        openai_client.completions.create(**completion),
    )
    assert ours_c.choices[0].text == theirs_c.choices[0].text
    assert ours_c.usage.completion_tokens == theirs_c.usage.completion_tokens

    schema_request = {**request, "extra_body": {"structured_outputs": {"json": PERSON}}, "max_tokens": 40}
    streamed = [
        chunk.choices[0].delta.content or ""
        for chunk in ingress.chat.completions.create(**schema_request, stream=True)
        if chunk.choices
    ]
    whole = openai_client.chat.completions.create(**schema_request).choices[0].message.content
    assert len(streamed) > 3 and "".join(streamed) == whole
    jsonschema.validate(json.loads(whole), PERSON)
    text_stream = "".join(c.choices[0].text for c in ingress.completions.create(**completion, stream=True))
    assert text_stream == theirs_c.choices[0].text


def test_online_models_work_against_the_ingress(ray_server: Any) -> None:
    outlines_vllm = pytest.importorskip("outlines_vllm")
    if not hasattr(outlines_vllm, "from_vllm"):
        pytest.skip("the online models are not in this tree yet")
    before = ray_server.metrics()
    model = outlines_vllm.from_vllm(client(ray_server))  # finds the served model via /v1/models
    person = model.parse("Invent a person.", Person, max_tokens=60)
    assert isinstance(person, Person)
    assert model("Pick a color.", outlines_vllm.Choice(COLORS), max_tokens=5) in COLORS
    assert "".join(model.stream("Invent a person.", Person, max_tokens=60)).startswith("{")

    # The gate's /version says the engine keeps JSON compact, so schemas travel as the schema;
    # the client's X-Outlines-Constraint header labels them json.
    assert model.engine_compact

    # Other replicas publish their metrics every 2 s: wait (bounded) until both requests show.
    def json_done() -> float:
        return metric_sum(
            ray_server.metrics(), "outlines_vllm_requests_total", constraint="json", status="200"
        )

    start, deadline = (
        metric_sum(before, "outlines_vllm_requests_total", constraint="json", status="200"),
        time.monotonic() + 30,
    )
    while (counted := json_done() - start) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert counted == 2


async def test_async_online_model_streams_through_the_ingress(ray_server: Any) -> None:
    outlines_vllm = pytest.importorskip("outlines_vllm")
    if not hasattr(outlines_vllm, "from_vllm"):
        pytest.skip("the online models are not in this tree yet")
    model = outlines_vllm.from_vllm(client(ray_server, openai.AsyncOpenAI), SERVED_NAME)
    people = await asyncio.gather(*(model.parse("Invent a person.", Person, max_tokens=60) for _ in range(3)))
    assert all(isinstance(p, Person) for p in people)
    chunks = [chunk async for chunk in model.stream("Invent a person.", Person, max_tokens=60)]
    Person.model_validate_json("".join(chunks))
