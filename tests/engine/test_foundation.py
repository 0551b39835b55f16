"""The default model generates schema-valid JSON in an embedded engine and through a real server."""

import json

import jsonschema
from pydantic import BaseModel

from outlines_vllm.types import output_spec

from ..conftest import SERVED_NAME


class Pet(BaseModel):
    name: str
    species: str
    age: int


PROMPT = [{"role": "user", "content": "Describe a pet as JSON with a name, a species and an age."}]


def test_embedded_engine_generates_schema_valid_json(llm):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    spec = output_spec(Pet)
    params = SamplingParams(
        max_tokens=96,
        temperature=0,
        structured_outputs=StructuredOutputsParams(**spec.constraint.structured_outputs()),
    )
    (out,) = llm.chat(PROMPT, params, use_tqdm=False)
    text = out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), Pet.model_json_schema())
    assert isinstance(spec.parse(text), Pet)


def test_server_generates_schema_valid_json(openai_client):
    spec = output_spec(Pet)
    reply = openai_client.chat.completions.create(
        model=SERVED_NAME,
        messages=PROMPT,
        max_tokens=96,
        temperature=0,
        extra_body={"structured_outputs": spec.constraint.structured_outputs()},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), Pet.model_json_schema())


def test_model_path_loads_in_vllm(llm, model_path):
    assert llm.llm_engine.model_config.model == str(model_path)
