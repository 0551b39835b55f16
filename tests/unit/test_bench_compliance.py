"""``bench compliance``: sampling is seeded, shares are over the right totals, truncations apart."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

import pytest

from outlines_vllm.bench import compliance


def test_sample_is_seeded_per_set() -> None:
    rows = compliance.sample(["Github_trivial", "Kubernetes"], 3, seed=1)
    assert [r["id"] for r in rows] == [
        r["id"] for r in compliance.sample(["Github_trivial", "Kubernetes"], 3, seed=1)
    ]
    assert [r["set"] for r in rows] == ["Github_trivial"] * 3 + ["Kubernetes"] * 3
    with pytest.raises(ValueError, match="unknown JSONSchemaBench sets"):
        compliance.sample(["Github_nightmare"], 1, seed=0)


RECORDS = [
    {
        "set": "Kubernetes",
        "id": "a",
        "backend": "xgrammar",
        "accepted": True,
        "valid": True,
        "truncated": False,
    },
    {
        "set": "Kubernetes",
        "id": "b",
        "backend": "xgrammar",
        "accepted": True,
        "valid": False,
        "truncated": True,
    },
    {"set": "Kubernetes", "id": "c", "backend": "xgrammar", "accepted": False, "error": "400"},
    {
        "set": "Kubernetes",
        "id": "e",
        "backend": "xgrammar",
        "accepted": False,
        "too_long": True,
        "error": "...",
    },
    {
        "set": "Snowplow",
        "id": "d",
        "backend": "xgrammar",
        "accepted": True,
        "valid": False,
        "truncated": False,
    },
    {
        "set": "Kubernetes",
        "id": "a",
        "backend": "guidance",
        "accepted": True,
        "valid": True,
        "truncated": False,
    },
]


def test_aggregate_counts_coverage_and_compliance_apart(tmp_path) -> None:
    table = compliance.aggregate(RECORDS)
    k8s = table["xgrammar"]["Kubernetes"]
    assert (k8s["schemas"], k8s["accepted"], k8s["valid"], k8s["truncated"], k8s["invalid"]) == (
        3,
        2,
        1,
        1,
        0,
    )
    assert k8s["too_long"] == 1  # left out of both shares
    assert k8s["accepted_share"] == pytest.approx(2 / 3)
    assert k8s["valid_share"] == 0.5
    assert table["xgrammar"]["all"]["invalid"] == 1
    assert table["guidance"]["all"]["valid_share"] == 1.0
    document = {
        "command": "outlines-vllm bench compliance",
        "model": "/m/SmolLM2",
        "options": {"per_set": 3, "seed": 0, "max_tokens": 512, "temperature": 0.0},
        "results": table,
        "records": RECORDS,
    }
    compliance.publish(document, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| Kubernetes | 1 | 2/3 / 1/2 (1) | 1/1 / 1/1 (0) |" in text
    assert "| Snowplow | 0 | 1/1 / 0/1 (0) | - |" in text
    assert json.loads((tmp_path / "results.json").read_text())["results"] == table
    assert (tmp_path / "compliance.png").stat().st_size > 1000


def test_a_grammar_the_engine_failed_to_compile_is_not_accepted_and_a_long_prompt_is_apart() -> None:
    """vLLM ends a request whose grammar fails to compile with finish reason ``error``; a prompt
    past the model's context is refused before any grammar is built."""
    from types import SimpleNamespace

    class Engine:  # answers like vllm.LLM.chat: the first schema fails to compile, the second is too long
        def chat(self, messages: list, params: list, use_tqdm: bool) -> list:
            if len(messages) > 1:
                raise ValueError("one request of the batch is refused")
            if "long" in messages[0][0]["content"]:
                raise ValueError("This model's maximum context length is 2048 tokens. However, ...")
            return [SimpleNamespace(outputs=[SimpleNamespace(text="", finish_reason="error")])]

    rows = [
        {"set": "Kubernetes", "id": "a", "schema": {"type": "object"}},
        {"set": "Kubernetes", "id": "b", "schema": {"type": "object", "title": "long"}},
    ]
    records = compliance.run(
        lambda: contextlib.nullcontext(Engine()),
        rows,
        "xgrammar",
        compliance.Sampling(max_tokens=8, temperature=0.0, seed=0),
    )
    assert [(r["accepted"], r.get("too_long", False)) for r in records] == [(False, False), (False, True)]
    counts = compliance.aggregate(records)["xgrammar"]["Kubernetes"]
    assert (counts["schemas"], counts["too_long"], counts["accepted"]) == (1, 1, 0)


def test_a_schema_that_kills_the_engine_is_recorded_and_the_run_goes_on_on_a_fresh_engine() -> None:
    """vLLM's outlines backend can kill its engine core on one schema and leave the caller
    waiting forever. The run records that schema as not accepted (``killed_engine``), whether
    the engine core was seen dead or the call only outlived its limit, starts a fresh engine
    and answers every other schema."""
    from types import SimpleNamespace

    never = threading.Event()
    started = []

    class Engine:  # vllm.LLM.chat; "dies" marks the engine core dead, both poisons never answer
        def __init__(self) -> None:
            self.llm_engine = SimpleNamespace(
                engine_core=SimpleNamespace(resources=SimpleNamespace(engine_dead=False))
            )

        def chat(self, messages: list, params: list, use_tqdm: bool) -> list:
            prompts = " ".join(m[0]["content"] for m in messages)
            if "dies" in prompts:
                self.llm_engine.engine_core.resources.engine_dead = True
            if "dies" in prompts or "hangs" in prompts:
                never.wait()
            return [
                SimpleNamespace(outputs=[SimpleNamespace(text="{}", finish_reason="stop")]) for _ in messages
            ]

    @contextlib.contextmanager
    def start() -> Iterator[Engine]:
        started.append(Engine())
        yield started[-1]

    rows = [
        {"set": "Kubernetes", "id": "a", "schema": {"type": "object"}},
        {"set": "Kubernetes", "id": "b", "schema": {"type": "object", "title": "dies"}},
        {"set": "Kubernetes", "id": "c", "schema": {"type": "object"}},
        {"set": "Snowplow", "id": "d", "schema": {"type": "object", "title": "hangs"}},
        {"set": "Snowplow", "id": "e", "schema": {"type": "object"}},
    ]
    try:
        records = compliance.run(start, rows, "outlines", compliance.Sampling(8, 0.0, 0), call_timeout_s=1.0)
    finally:
        never.set()
    assert [(r["id"], r["accepted"], r.get("killed_engine", False)) for r in records] == [
        ("a", True, False),
        ("b", False, True),
        ("c", True, False),
        ("d", False, True),
        ("e", True, False),
    ]
    assert all(r["valid"] for r in records if r["accepted"])
    assert "engine core died" in records[1]["error"] and "no answer after 1 s" in records[3]["error"]
    assert len(started) == 5  # the first; then, per set, after the batch and after the poison alone
    assert compliance.aggregate(records)["outlines"]["all"]["killed_engine"] == 2
