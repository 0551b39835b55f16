"""Generations, streams and partial objects say what happened, on the real server and the real
embedded engines: finish reason and token usage (the same counts online and offline for the same
greedy request), and typed partial objects for a Pydantic type."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from outlines_vllm import TruncatedOutputError, from_vllm, from_vllm_offline
from outlines_vllm.models.base import Usage


class Pet(BaseModel):
    name: Annotated[str, Field(max_length=16)]
    species: Annotated[str, Field(max_length=16)]


ASK = dict(max_tokens=80, temperature=0)


def test_generations_carry_finish_reason_and_the_same_usage_online_and_offline(openai_client, llm):
    (online,) = from_vllm(openai_client).generate("Describe a pet.", Pet, **ASK)
    (offline,) = from_vllm_offline(llm).generate("Describe a pet.", Pet, **ASK)
    assert online.finish_reason == offline.finish_reason == "stop"
    assert online.text == offline.text  # greedy: the same text both ways ...
    assert online.usage == offline.usage  # ... and the same token counts
    assert online.usage.prompt_tokens > 5 and online.usage.completion_tokens > 5


def test_a_stream_holds_finish_reason_and_usage_when_it_ends(openai_client, llm):
    for model in (from_vllm(openai_client), from_vllm_offline(llm)):
        stream = model.stream("Describe a pet.", Pet, **ASK)
        text = "".join(stream)
        assert (stream.text, stream.finish_reason) == (text, "stop")
        assert isinstance(stream.usage, Usage) and stream.usage.completion_tokens > 5
        (generation,) = model.generate("Describe a pet.", Pet, **ASK)
        assert stream.usage == generation.usage


def test_a_truncated_stream_still_reports_length_and_usage(openai_client):
    stream = from_vllm(openai_client).stream("Describe a pet.", Pet, max_tokens=4)
    with pytest.raises(TruncatedOutputError) as cut:
        "".join(stream)
    assert stream.finish_reason == "length" and stream.usage.completion_tokens == 4
    assert cut.value.usage == stream.usage


async def test_async_streams_report_usage_online_and_offline(async_openai_client, async_llm):
    for model in (from_vllm(async_openai_client), from_vllm_offline(async_llm)):
        stream = model.stream("Describe a pet.", Pet, **ASK)
        chunks = [chunk async for chunk in stream]
        assert stream.text == "".join(chunks) and stream.finish_reason == "stop"
        assert stream.usage.completion_tokens > 5


def test_sync_partial_objects_are_typed_offline(llm):
    partials = list(from_vllm_offline(llm).stream_partial("Describe a pet.", Pet, **ASK))
    *growing, final = partials
    assert growing and all(type(p).__name__ == "PartialPet" for p in growing)
    assert isinstance(final, Pet)


async def test_async_partial_objects_are_typed_online(async_openai_client):
    model = from_vllm(async_openai_client)
    partials = [p async for p in model.stream_partial("Describe a pet.", Pet, **ASK)]
    assert type(partials[0]).__name__ == "PartialPet" and isinstance(partials[-1], Pet)
    assert partials[-1] == await model.parse("Describe a pet.", Pet, **ASK)


def test_the_offline_batch_returns_generations_with_usage(llm):
    results = from_vllm_offline(llm).batch(
        ["Describe a pet."] * 2, Pet, generations=True, progress=False, **ASK
    )
    assert [len(r) for r in results] == [1, 1]
    assert all(r[0].usage.completion_tokens > 5 and isinstance(r[0].value, Pet) for r in results)
