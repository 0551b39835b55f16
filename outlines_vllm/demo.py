"""The main job on the default model: a small Pydantic object, generated offline and online."""

from __future__ import annotations

import time

from pydantic import BaseModel

from .types import output_spec


class Character(BaseModel):
    name: str
    age: int
    strength: int


PROMPT = "Create a fantasy character with a name, an age and a strength from 1 to 10."


def main(online: bool = True) -> int:
    from openai import OpenAI
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from .default_model import prepare
    from .launch import LocalServer, engine_kwargs

    path = prepare()
    spec = output_spec(Character)
    fields = spec.constraint.structured_outputs()

    print(f"offline: starting an embedded engine on {path}")
    llm = LLM(str(path), **engine_kwargs())
    params = SamplingParams(
        max_tokens=128, temperature=0, structured_outputs=StructuredOutputsParams(**fields)
    )
    start = time.perf_counter()
    (result,) = llm.chat([{"role": "user", "content": PROMPT}], params, use_tqdm=False)
    print(f"offline ({time.perf_counter() - start:.2f} s): {spec.parse(result.outputs[0].text)!r}")
    del llm

    if online:
        print("online: starting a local vLLM server")
        with LocalServer(path, served_model_name="smollm2") as server:
            client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
            start = time.perf_counter()
            reply = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=128,
                temperature=0,
                extra_body={"structured_outputs": fields},
            )
            text = reply.choices[0].message.content or ""
            print(f"online ({time.perf_counter() - start:.2f} s): {spec.parse(text)!r}")
    return 0
