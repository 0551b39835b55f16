"""Measure compact JSON against free whitespace on a running vLLM server (docs/compact-json.md).

    python docs/measure_compact_json.py http://127.0.0.1:8000/v1 [requests]

Sends the same prompts with the same schema twice, once as ``output_spec(T)`` (compact, the
default) and once as ``output_spec(T, compact=False)`` (vLLM's ``json`` constraint), and reports
valid objects, truncations and completion tokens per object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import openai
from pydantic import BaseModel, Field

from outlines_vllm import OutlinesVLLMError, output_spec
from outlines_vllm.models.base import finish
from outlines_vllm.models.request import build_request


class Character(BaseModel):
    name: str
    age: int
    occupation: str
    skills: list[str]


Text = Annotated[str, Field(max_length=40)]


class BoundedCharacter(BaseModel):
    """The same object with its strings and list bounded, as docs/examples.md recommends."""

    name: Text
    age: int
    occupation: Text
    skills: Annotated[list[Text], Field(max_length=5)]


def run(
    client: openai.OpenAI, model: str, output_type: type, compact: bool, requests: int
) -> dict[str, object]:
    spec = output_spec(output_type, compact=compact)

    def one(i: int) -> tuple[str, int]:
        request = build_request(
            model,
            f"Create character number {i} for a fantasy story.",
            spec,
            {"max_tokens": 256, "temperature": 0.8, "seed": i},
        )
        reply = client.chat.completions.create(**request.body)
        choice = reply.choices[0]
        try:
            finish(spec, choice.message.content or "", choice.finish_reason, 256)
            outcome = "valid"
        except OutlinesVLLMError as exc:
            outcome = type(exc).__name__
        return outcome, reply.usage.completion_tokens

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(requests)))
    elapsed = time.monotonic() - start
    valid = [tokens for outcome, tokens in results if outcome == "valid"]
    return {
        "type": output_type.__name__,
        "compact": compact,
        "requests": requests,
        "valid": len(valid),
        "truncated": sum(outcome == "TruncatedOutputError" for outcome, _ in results),
        "tokens_per_valid_object": round(statistics.mean(valid), 1) if valid else None,
        "tokens_total": sum(tokens for _, tokens in results),
        "valid_per_second": round(len(valid) / elapsed, 2),
        "seconds": round(elapsed, 1),
    }


if __name__ == "__main__":
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    client = openai.OpenAI(base_url=base_url, api_key="-", max_retries=0)
    model = client.models.list().data[0].id
    for output_type in (Character, BoundedCharacter):
        for compact in (True, False):
            print(json.dumps(run(client, model, output_type, compact, requests)), flush=True)
