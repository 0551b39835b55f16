"""Measure the two compact-JSON forms on an engine that is compact engine-wide (docs/compact-json.md).

    python docs/measure_compact_forms.py [requests] [repeats]

Starts the default model embedded, with this project's engine configuration (xgrammar,
``disable_any_whitespace``), and sends the same person-profile prompts as the schema (what the
package sends to such an engine: ``output_spec(T)``) and as the exact regex (what it sends to a
server of unknown settings, forced here with ``whitespace_pattern=""``). Runs alternate;
reports valid objects/s per form (median, min-max), answers with a space after a separator,
and tokens per answer.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

FORMS = ("schema form (the default here)", 'regex form (whitespace_pattern="")')


def main(requests: int = 16, repeats: int = 3) -> None:
    from vllm import LLM

    from outlines_vllm import from_vllm_offline, output_spec
    from outlines_vllm.bench.workloads import PERSON_SCHEMA, _person_prompts
    from outlines_vllm.default_model import prepare
    from outlines_vllm.launch import engine_kwargs

    llm = LLM(str(prepare()), seed=0, **engine_kwargs())
    model = from_vllm_offline(llm)
    assert model.engine_compact, "this engine should keep JSON compact itself"
    forms = (output_spec(PERSON_SCHEMA), output_spec(PERSON_SCHEMA, whitespace_pattern=""))
    specs = dict(zip(FORMS, forms, strict=True))
    prompts = _person_prompts(requests, random.Random(0))
    model.batch(
        prompts[:2], specs[FORMS[0]], max_tokens=128, progress=False, return_exceptions=True
    )  # warm-up
    rates: dict[str, list[float]] = {form: [] for form in FORMS}
    for repeat in range(repeats):
        for form in FORMS if repeat % 2 == 0 else FORMS[::-1]:
            start = time.perf_counter()
            results = model.batch(
                prompts, specs[form], max_tokens=128, temperature=0.7, seed=repeat,
                generations=True, return_exceptions=True, progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            valid = [r[0] for r in results if not isinstance(r, Exception)]
            spaced = sum(", " in g.text or ": " in g.text for g in valid)
            tokens = statistics.mean(g.usage.completion_tokens for g in valid) if valid else 0.0
            rates[form].append(len(valid) / wall)
            print(
                f"repeat {repeat} {form}: valid {len(valid)}/{requests}, {len(valid) / wall:.2f} valid obj/s, "
                f"{spaced} with a space after a separator, {tokens:.1f} tokens per answer",
                flush=True,
            )
    for form, values in rates.items():
        print(
            f"{form}: valid obj/s median {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
        )
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    main(*(int(arg) for arg in sys.argv[1:3]))
