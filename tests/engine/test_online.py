"""VLLM and AsyncVLLM against the real vLLM server: every output type, streaming, partial objects,
batches, n > 1, chat, the completions endpoint, and every error provoked for real."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from outlines_vllm import (
    CFG,
    VLLM,
    AsyncVLLM,
    Chat,
    Choice,
    ConstraintRejectedError,
    JsonObject,
    JsonSchema,
    OutputValidationError,
    Regex,
    TruncatedOutputError,
    from_vllm,
    output_spec,
)
from outlines_vllm.errors import InvalidPromptError

from ..conftest import SERVED_NAME

Short = Annotated[str, Field(max_length=16)]


class Character(BaseModel):
    name: Short
    age: int
    skills: Annotated[list[Short], Field(max_length=3)]


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Pair:
    left: Short
    right: Short


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
LARK = 'start: NUMBER " + " NUMBER\nNUMBER: /[0-9]{1,3}/'
GBNF = 'root ::= "The answer is " ("yes" | "no")'

# Every output type the issue lists, with a prompt it fits.
CASES = {
    "pydantic": (Character, "Create a character."),
    "typeddict": (Point, "Give a point with x and y."),
    "dataclass": (Pair, "Give a pair of words."),
    "list_of_models": (Annotated[list[Pair], Field(min_length=1, max_length=2)], "Give pairs of words."),
    "schema_dict": (SCHEMA, "Describe a city."),
    "schema_string": (JsonSchema(json.dumps(SCHEMA)), "Describe a city."),
    "literal": (Literal["Paris", "London", "Rome"], "What is the capital of France?"),
    "enum": (Color, "What color is the sky?"),
    "choice": (Choice(["cat", "dog"]), "Which animal barks?"),
    "int": (int, "How many legs does a spider have?"),
    "float": (float, "What is pi?"),
    "bool": (bool, "Is water wet?"),
    "date": (dt.date, "When did the Berlin wall fall?"),
    "datetime": (dt.datetime, "Give a date and time."),
    "time": (dt.time, "What time is it?"),
    "uuid": (uuid.UUID, "Give a UUID."),
    "regex": (Regex(r"\d{3}-\d{2}-\d{4}"), "Generate a fake social security number."),
    "cfg_lark": (CFG(LARK), "Write an addition."),
    "cfg_gbnf": (CFG(GBNF), "Is the sky blue?"),
    "json_object": (JsonObject, "Describe a cat as a JSON object with two keys."),
    "json_not_compact": (output_spec(Character, compact=False), "Create a character."),
    "json_whitespace_pattern": (output_spec(SCHEMA, whitespace_pattern="[ ]?"), "Describe a city."),
    "json_closed_objects": (output_spec(SCHEMA, additional_properties=False), "Describe a city."),
}


@pytest.fixture(scope="module")
def model(openai_client) -> VLLM:
    return from_vllm(openai_client)


@pytest.fixture(scope="module")
def results(model):
    """One generation per case, all sent at once so the server batches them."""

    def run(case):
        output_type, prompt = case
        try:
            return model.generate(prompt, output_type, max_tokens=120, temperature=0)[0]
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(CASES)) as pool:
        return dict(zip(CASES, pool.map(run, CASES.values()), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_every_output_type_generates_output_its_parser_accepts(results, case):
    output_type, _ = CASES[case]
    result = results[case]
    if isinstance(result, Exception):
        raise result
    spec = output_spec(output_type)
    assert result.finish_reason == "stop"
    assert spec.parse(result.text) == result.value
    if spec.kind in ("json", "json_object"):
        jsonschema.validate(json.loads(result.text), spec.json_schema or {"type": "object"})
    if spec.kind == "choice":
        assert result.text in spec.constraint.value
    if case == "json_whitespace_pattern":
        assert "\n" not in result.text and "  " not in result.text
    if case.startswith("cfg"):
        assert result.text.startswith("The answer is ") or " + " in result.text


def test_the_server_version_and_model_name_come_from_the_server(model):
    model("Hi", max_tokens=1)
    assert model.model_name == SERVED_NAME
    assert model.server_version and model.server_version.startswith("0.")


# --- the calls of Outlines' vLLM documentation, with outlines_vllm in place of outlines -------


def test_outlines_docs_sync_calls_work_as_written(openai_client):
    import outlines_vllm as outlines

    model = outlines.from_vllm(openai_client, SERVED_NAME)
    assert type(model) is VLLM
    assert isinstance(model("What's the capital of Latvia?", max_tokens=20), str)
    result = model("Create a character.", output_type=Character)
    assert isinstance(Character.model_validate_json(result), Character)
    assert model("What is the capital of France?", Literal["Paris", "London"], temperature=0) in (
        "Paris",
        "London",
    )
    chunks = list(model.stream("Tell me a short story about a cat.", max_tokens=100))
    assert len(chunks) > 1 and all(isinstance(c, str) for c in chunks)
    # vLLM-specific sampling arguments through extra_body, next to our constraint
    result = model(
        "Create a character.", output_type=Character, extra_body={"top_k": 5, "repetition_penalty": 1.1}
    )
    Character.model_validate_json(result)
    assert model(
        "Write an addition.", CFG(LARK), extra_body={"guided_decoding_backend": "outlines"}, max_tokens=20
    )


async def test_outlines_docs_async_calls_work_as_written(async_openai_client):
    import outlines_vllm as outlines

    async_model = outlines.from_vllm(async_openai_client, SERVED_NAME)
    assert type(async_model) is AsyncVLLM
    result = await async_model("Create a character.", output_type=Character)
    Character.model_validate_json(result)
    chunks = [c async for c in async_model.stream("Tell me a story about a robot.", max_tokens=100)]
    assert len(chunks) > 1


# --- streaming, partial objects, batches, n > 1, chat, completions ------------------------------


def test_sync_stream_of_a_json_type_joins_into_a_valid_object(model):
    chunks = list(model.stream("Create a character.", Character, max_tokens=120, temperature=0))
    assert len(chunks) > 3
    Character.model_validate_json("".join(chunks))


async def test_async_stream_of_a_json_type_joins_into_a_valid_object(async_openai_client):
    model = from_vllm(async_openai_client)
    chunks = [c async for c in model.stream("Describe a city.", SCHEMA, max_tokens=120, temperature=0)]
    assert len(chunks) > 3
    jsonschema.validate(json.loads("".join(chunks)), SCHEMA)


def test_sync_partial_objects_grow_into_the_complete_value(model):
    partials = list(model.stream_partial("Create a character.", Character, max_tokens=120, temperature=0))
    assert len(partials) > 2
    *growing, final = partials
    assert all(type(p).__name__ == "PartialCharacter" for p in growing)  # typed, as instructor's
    assert isinstance(final, Character)
    assert final == model.parse("Create a character.", Character, max_tokens=120, temperature=0)
    assert growing[0].model_fields_set <= growing[-1].model_fields_set


async def test_async_partial_objects_grow_into_the_complete_value(async_openai_client):
    model = from_vllm(async_openai_client)
    partials = [
        p async for p in model.stream_partial("Describe a city.", SCHEMA, max_tokens=120, temperature=0)
    ]
    assert len(partials) > 2 and all(isinstance(p, dict) for p in partials)  # a dict schema: dicts
    jsonschema.validate(partials[-1], SCHEMA)


def test_sync_batch_keeps_order_and_parses(model):
    prompts = ["Is fire hot?", "Is ice hot?", "Is the sun hot?", "Is snow hot?"]
    values = model.batch(prompts, Literal["yes", "no"], max_concurrency=2, parse=True, temperature=0)
    assert len(values) == 4 and set(values) <= {"yes", "no"}
    texts = model.batch(["Describe a city.", "Describe a town."], SCHEMA, max_tokens=120, temperature=0)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


async def test_async_batch_keeps_order_and_reports_errors_in_place(async_openai_client):
    model = from_vllm(async_openai_client)
    prompts = ["Create a character.", "Create a hero.", "Create a villain."]
    values = await model.batch(
        prompts, Character, max_concurrency=2, parse=True, max_tokens=120, temperature=0
    )
    assert all(isinstance(v, Character) for v in values)
    mixed = await model.batch(
        [[{"role": "user", "content": "Create a character."}], "Create a hero."],
        Character,
        return_exceptions=True,
        max_tokens=4,
    )
    assert all(isinstance(v, TruncatedOutputError) for v in mixed)


def test_n_greater_than_one_returns_one_result_per_sample(model):
    texts = model("Pick a color.", Color, n=3, temperature=1.0, seed=1)
    assert len(texts) == 3 and set(texts) <= {"red", "green", "blue"}
    values = model.parse("Create a character.", Character, n=2, max_tokens=120, temperature=1.0, seed=1)
    assert len(values) == 2 and all(isinstance(v, Character) for v in values)


def test_chat_messages_and_chat_objects(model):
    messages = [
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "What is the capital of Italy?"},
    ]
    assert model(messages, Literal["Rome", "Milan"], temperature=0) in ("Rome", "Milan")
    chat = Chat().add_system_message("You describe cities.").add_user_message("Describe Paris.")
    value = model.parse(chat, SCHEMA, max_tokens=120, temperature=0)
    jsonschema.validate(value, SCHEMA)


def test_completions_endpoint_for_base_model_prompts(openai_client):
    model = from_vllm(openai_client, endpoint="completions")
    assert isinstance(model.parse("Q: How many legs does a cat have?\nA: ", int, max_tokens=20), int)
    text = model("The city of Paris as JSON: ", SCHEMA, max_tokens=120, temperature=0)
    jsonschema.validate(json.loads(text), SCHEMA)
    chat_model = from_vllm(openai_client)
    assert isinstance(chat_model.parse("Q: 2+2?\nA: ", int, endpoint="completions", max_tokens=20), int)
    with pytest.raises(InvalidPromptError):
        model([{"role": "user", "content": "hi"}])


# --- each error, provoked for real ---------------------------------------------------------------


def test_tiny_max_tokens_raises_truncated_output(model):
    with pytest.raises(TruncatedOutputError, match="max_tokens=4") as info:
        model("Create a character.", Character, max_tokens=4)
    assert info.value.text  # the partial text is kept for the caller
    with pytest.raises(TruncatedOutputError):
        "".join(model.stream("Create a character.", Character, max_tokens=4))


async def test_tiny_max_tokens_raises_truncated_output_async(async_openai_client):
    with pytest.raises(TruncatedOutputError):
        await from_vllm(async_openai_client)("Create a character.", Character, max_tokens=4)


def test_a_schema_the_server_rejects_raises_with_its_400_message(model):
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    with pytest.raises(ConstraintRejectedError, match="missing") as info:
        model("Hi", output_spec(dangling, compact=False), max_tokens=5)
    assert info.value.status_code == 400
    with pytest.raises(ConstraintRejectedError, match="nonsense"):
        model("Hi", extra_body={"structured_outputs": {"json": {"type": "nonsense"}}}, max_tokens=5)
    with pytest.raises(ConstraintRejectedError, match="grammar"):
        model("Hi", CFG("this is not a grammar ::= ("), max_tokens=5)


async def test_a_rejected_stream_raises_before_any_chunk(async_openai_client):
    model = from_vllm(async_openai_client)
    with pytest.raises(ConstraintRejectedError, match="(?i)look-?around|lookahead"):
        async for _ in model.stream("Hi", Regex("(?=a)a+"), max_tokens=5):
            pass


def test_output_cut_by_a_stop_string_fails_validation(model):
    # The server honours stop strings even under a constraint: the JSON ends early, finish_reason
    # is "stop", and only our parser stands between that text and the caller.
    with pytest.raises(OutputValidationError, match=r"(?i)invalid JSON"):
        model("Create a character.", Character, stop=[","], max_tokens=60, temperature=0)
