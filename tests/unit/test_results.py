"""Results say what happened: finish reason and token usage on generations, streams and the
errors that keep generated text; partial objects are typed for a Pydantic output type."""

from __future__ import annotations

from typing import Literal

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from outlines_vllm import OutputValidationError, TruncatedOutputError, output_spec
from outlines_vllm.models.base import PartialObjects, TextStream, Usage
from outlines_vllm.models.request import build_request


class Owner(BaseModel):
    name: str
    tags: list[str]


class Pet(BaseModel):
    name: str = Field(max_length=5)
    kind: Literal["cat", "dog"]
    owner: Owner


def response(content: str, finish: str, usage: dict | None) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}
            ],
            "usage": usage,
        }
    )


def chunk(content: str | None, finish: str | None = None, usage: dict | None = None) -> ChatCompletionChunk:
    choices = (
        [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    return ChatCompletionChunk.model_validate(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": choices,
            "usage": usage,
        }
    )


USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def test_a_generation_carries_finish_reason_and_usage():
    (generation,) = build_request("m", "hi", int, {}).generations(response("42", "stop", USAGE))
    assert (generation.value, generation.finish_reason) == (42, "stop")
    assert generation.usage == Usage(12, 5) and generation.usage.total_tokens == 17
    (bare,) = build_request("m", "hi", None, {}).generations(response("hi", "stop", None))
    assert bare.usage is None


def test_errors_that_keep_text_keep_usage_and_finish_reason():
    with pytest.raises(TruncatedOutputError) as cut:
        build_request("m", "hi", Owner, {}).generations(response('{"na', "length", USAGE))
    assert cut.value.usage == Usage(12, 5)
    with pytest.raises(OutputValidationError) as bad:
        build_request("m", "hi", Owner, {}).generations(response('{"x": 1}', "stop", USAGE))
    assert (bad.value.usage, bad.value.finish_reason) == (Usage(12, 5), "stop")


def test_streams_ask_for_usage_unless_the_caller_chose():
    assert build_request("m", "hi", None, {}, stream=True).body["stream_options"] == {"include_usage": True}
    own = {"stream_options": {"include_usage": False}}
    assert build_request("m", "hi", None, own, stream=True).body["stream_options"] == {"include_usage": False}
    assert "stream_options" not in build_request("m", "hi", None, {}).body


def test_the_stream_reader_takes_usage_from_the_last_chunk_and_tells_the_stream():
    reader = build_request("m", "hi", int, {}, stream=True).reader()
    for c in (chunk("4"), chunk("2", "stop"), chunk(None, usage=USAGE)):
        reader.feed(c)
    sink = TextStream(lambda _: iter(()))
    assert reader.finish(sink) == 42
    assert (sink.text, sink.finish_reason, sink.usage) == ("42", "stop", Usage(12, 5))


def test_partial_objects_of_a_pydantic_type_are_typed_and_end_with_the_checked_value():
    partials = PartialObjects(output_spec(Pet))
    deltas = ['{"name": "Al', 'i", "kind": "c', 'at", "owner": {"name": "Bo", "tags": ["a', '"]}}']
    seen = [p for delta in deltas for p in partials.feed(delta)]
    seen += list(partials.end())
    assert [type(p).__name__ for p in seen] == ["PartialPet", "PartialPet", "Pet"]
    assert (seen[0].name, seen[0].kind, seen[0].owner) == ("Al", None, None)  # "c" is no kind yet: skipped
    assert (seen[1].kind, seen[1].owner.name, seen[1].owner.tags) == ("cat", "Bo", ["a"])
    assert seen[-1] == Pet(name="Ali", kind="cat", owner=Owner(name="Bo", tags=["a"]))


def test_partial_objects_of_a_dict_schema_stay_dicts_without_a_repeated_final():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    partials = PartialObjects(output_spec(schema))
    seen = [p for delta in ['{"a": ', "1", "}"] for p in partials.feed(delta)] + list(partials.end())
    assert seen == [{}, {"a": 1}]
