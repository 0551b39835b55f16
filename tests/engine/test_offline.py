"""VLLMOffline and AsyncVLLMOffline on the real embedded CPU engines (session ``llm`` and
``async_llm``): every output type, one engine call per batch, streaming, chat, pass-through."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from typing import Annotated, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from outlines_vllm import (
    CFG,
    AsyncVLLMOffline,
    BadRequestError,
    Choice,
    ConstraintRejectedError,
    InvalidRequestError,
    JsonObject,
    JsonSchema,
    Regex,
    TruncatedOutputError,
    VLLMOffline,
    from_vllm_offline,
    output_spec,
)
from tests.runaway import BOUNDED, NUMBER, RUNAWAY, nested

# Bounded strings keep the tiny model from rambling inside a string until max_tokens.
Short = Annotated[str, Field(max_length=24)]


class Pet(BaseModel):
    name: Short
    species: Short
    age: int


class City(TypedDict):
    name: Short
    country: Short


@dataclasses.dataclass
class Book:
    title: Short
    year: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


ARITHMETIC = r"""
start: NUMBER "+" NUMBER
NUMBER: /[0-9]{1,3}/
"""

CAR = {"type": "object", "properties": {"make": {"type": "string", "maxLength": 24}}, "required": ["make"]}
PLANET = {"type": "object", "properties": {"moons": {"type": "integer"}}, "required": ["moons"]}

# (prompt, output type, Python type of the parsed value)
EVERY_TYPE = [
    ("Describe a pet as JSON.", Pet, Pet),
    ("Name a city and its country as JSON.", City, dict),
    ("Name a book and the year it was published, as JSON.", Book, Book),
    ("List two pets as JSON.", list[Pet], list),
    ("Describe a car as JSON.", JsonSchema(CAR), dict),
    ("Describe a planet as JSON.", PLANET, dict),
    ("Is water wet? Answer yes or no.", Literal["yes", "no"], str),
    ("What colour is the sky?", Color, Color),
    ("Pick a fruit.", Choice(["apple", "pear"]), str),
    ("How many legs does a dog have?", int, int),
    ("What is pi to two decimals?", float, float),
    ("Is the earth round? Answer True or False.", bool, bool),
    ("When did the Berlin wall fall? Give the date.", dt.date, dt.date),
    ("When did the Apollo 11 land? Give date and time.", dt.datetime, dt.datetime),
    ("What time is noon?", dt.time, dt.time),
    ("Give a random UUID.", uuid.UUID, uuid.UUID),
    ("Give a US zip code.", Regex(r"[0-9]{5}"), str),
    ("Add two small numbers.", CFG(ARITHMETIC), str),
    ("Describe a cat as a JSON object with two keys.", JsonObject, dict),
]


@pytest.fixture(scope="module")
def model(llm) -> VLLMOffline:
    return from_vllm_offline(llm)


@pytest.fixture
def count_engine_calls(llm, monkeypatch):
    """How many times the engine's generate/chat were called during the test."""
    calls: list[str] = []
    for name in ("generate", "chat"):
        original = getattr(llm, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(llm, name, counting)
    return calls


def test_every_output_type_yields_output_its_parser_accepts(model):
    prompts, types, expected = zip(*EVERY_TYPE, strict=True)
    texts = model.batch(list(prompts), list(types), max_tokens=200, temperature=0, progress=False)
    for text, tp, py_type in zip(texts, types, expected, strict=True):
        spec = output_spec(tp)
        value = spec.parse(text)
        origin = getattr(py_type, "__origin__", py_type)
        assert isinstance(value, origin), (tp, text, value)
        if spec.json_schema is not None:
            jsonschema.validate(json.loads(text), spec.json_schema)


def test_mixed_batch_of_five_output_types_is_one_engine_call(model, count_engine_calls):
    types = [Pet, Literal["yes", "no"], int, Regex(r"[A-Z]{3}"), Color]
    prompts = [
        "Describe a pet.",
        "Is ice cold?",
        "How many days in a week?",
        "An airport code.",
        "Pick a colour.",
    ]
    values = model.batch(prompts, types, parse=True, max_tokens=96, temperature=0, progress=False)
    assert count_engine_calls == ["generate"]
    assert isinstance(values[0], Pet)
    assert values[1] in ("yes", "no")
    assert isinstance(values[2], int)
    assert len(values[3]) == 3 and values[3].isupper()
    assert isinstance(values[4], Color)


def test_batch_leaves_callers_sampling_params_unchanged(model):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=64)
    before = params.clone()
    model.batch(["Describe a pet.", "Is ice cold?"], [Pet, Literal["yes", "no"]], sampling_params=params)
    model("Describe a pet.", Pet, sampling_params=params, max_tokens=80)
    assert params == before
    assert params.structured_outputs is None and params.max_tokens == 64


def test_parse_returns_the_validated_value(model):
    pet = model.parse("Describe a pet.", Pet, max_tokens=96, temperature=0)
    assert isinstance(pet, Pet)


def test_truncated_output_raises_instead_of_returning_text(model):
    with pytest.raises(TruncatedOutputError) as caught:
        model("Describe a pet.", Pet, max_tokens=3, temperature=0)
    assert caught.value.text.startswith("{")


def test_batch_with_return_exceptions_keeps_each_error_in_its_place(model):
    results = model.batch(
        ["Describe a pet.", "Is ice cold?"], [Pet, Literal["yes", "no"]], max_tokens=4, return_exceptions=True
    )
    assert isinstance(results[0], TruncatedOutputError)
    assert results[1] in ("yes", "no")


def test_n_greater_than_one_returns_a_list(model):
    texts = model("Pick a colour.", Color, n=3, temperature=1.0, seed=1, max_tokens=8)
    assert len(texts) == 3 and all(t in ("red", "green", "blue") for t in texts)


def test_chat_template_is_used_and_raw_prompts_opt_out(model):
    chat = model._request("Say hi.", None, None, {})
    assert "<|im_start|>user\nSay hi.<|im_end|>" in chat.prompt["prompt"]
    assert chat.prompt["prompt"].endswith("<|im_start|>assistant\n")
    raw = model._request("Say hi.", None, None, {"endpoint": "completions"})
    assert raw.prompt["prompt"] == "Say hi."
    assert isinstance(model("Once upon a time", endpoint="completions", max_tokens=8, temperature=0), str)


def test_messages_go_to_chat_with_their_own_system_prompt(model):
    messages = [{"role": "system", "content": "You name pets."}, {"role": "user", "content": "A pet."}]
    request = model._request(messages, None, None, {})
    assert "<|im_start|>system\nYou name pets.<|im_end|>" in request.prompt["prompt"]
    assert "SmolLM" not in request.prompt["prompt"]  # the template's default system prompt is replaced
    assert isinstance(model.parse(messages, Pet, max_tokens=96, temperature=0), Pet)


def test_lora_request_passes_through_to_the_engine(model):
    from vllm.exceptions import VLLMValidationError
    from vllm.lora.request import LoRARequest

    # The engine runs without LoRA; the engine itself refusing proves the request reached it.
    with pytest.raises(BadRequestError, match="LoRA is not enabled") as caught:
        model("Hi.", max_tokens=4, lora_request=LoRARequest("adapter", 1, "/nonexistent"))
    assert isinstance(caught.value.__cause__, VLLMValidationError)


def test_unknown_generation_argument_is_a_named_error(model):
    with pytest.raises(InvalidRequestError, match="max_tokenz"):
        model("Hi.", max_tokenz=4)


def test_sync_stream_chunks_join_to_the_final_text(model):
    chunks = list(model.stream("Describe a pet.", Pet, max_tokens=96, temperature=0))
    assert len(chunks) > 3
    assert "".join(chunks) == model("Describe a pet.", Pet, max_tokens=96, temperature=0)


async def test_async_stream_yields_several_chunks_that_join_to_the_final_text(async_llm):
    model = from_vllm_offline(async_llm)
    assert isinstance(model, AsyncVLLMOffline)
    chunks = [chunk async for chunk in model.stream("Describe a pet.", Pet, max_tokens=96, temperature=0)]
    assert len(chunks) > 3
    text = "".join(chunks)
    assert text == await model("Describe a pet.", Pet, max_tokens=96, temperature=0)
    assert isinstance(Pet.model_validate_json(text), Pet)


async def test_async_stream_partial_grows_into_the_final_object(async_llm):
    model = from_vllm_offline(async_llm)
    partials = [p async for p in model.stream_partial("Describe a pet.", Pet, max_tokens=96, temperature=0)]
    assert len(partials) > 1
    assert all(type(p).__name__ == "PartialPet" for p in partials[:-1])
    assert partials[-1] == await model.parse("Describe a pet.", Pet, max_tokens=96, temperature=0)


async def test_async_batch_mixes_output_types(async_llm):
    model = from_vllm_offline(async_llm)
    values = await model.batch(
        ["Describe a pet.", "Is ice cold?", "How many days in a week?"],
        [Pet, Literal["yes", "no"], int],
        parse=True,
        max_tokens=96,
        temperature=0,
        progress=False,
    )
    assert isinstance(values[0], Pet) and values[1] in ("yes", "no") and isinstance(values[2], int)


def test_on_our_engine_json_goes_as_the_schema_with_its_digits_bounded(model):
    """Our engines keep JSON compact themselves (launch.STRUCTURED_OUTPUTS_CONFIG), so schemas go
    as the schema (xgrammar masks it ~400x faster than the regex), integers capped at 16 digits."""
    assert model.engine_compact
    sent = model._request("x", NUMBER, None, {}).params.structured_outputs
    assert sent.regex is None and sent.json["properties"]["n"]["maximum"] == 10**16 - 1
    texts = model.batch(RUNAWAY, NUMBER, max_tokens=40, temperature=0, endpoint="completions", progress=False)
    assert texts == BOUNDED
    # The control: the same schema without the bound runs on to max_tokens.
    with pytest.raises(TruncatedOutputError):
        model(
            RUNAWAY[0],
            output_spec(NUMBER, compact=False),
            max_tokens=40,
            temperature=0,
            endpoint="completions",
        )


def test_a_schema_the_engine_refuses_as_a_schema_goes_as_its_regex(model):
    """vLLM refuses schemas nested deeper than 64 JSON levels; the regex form is not checked so,
    and states the schema exactly."""
    deep = nested(34)
    with pytest.raises(ConstraintRejectedError, match="nested too deeply"):  # the control
        model("Fill in the JSON.", output_spec(deep, compact=False), max_tokens=200)
    assert model._request("x", deep, None, {}).params.structured_outputs.regex
    value = model.parse("Fill in the JSON.", deep, max_tokens=400, temperature=0)
    for _ in range(34):
        value = value["a"]
    assert 0 <= value <= 9
