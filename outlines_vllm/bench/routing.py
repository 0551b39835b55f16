"""How well a Ray app keeps shared prompt prefixes on one replica: a prefix-sharing workload
and the prefix-cache hit rate it gets, read from the app's own ``/metrics``.

Clients that send many requests sharing a long prefix (a system prompt, a few-shot block, a
document) gain from each replica's vLLM prefix cache only if those requests land on the
replica that holds the prefix. The workload here sends ``groups`` long random prefixes, each
with ``per_group`` short distinct endings, round-robin over the groups and one at a time (so
load is even and only the routing policy decides), and reports per group which replicas
answered (the ``x-outlines-replica`` header) and the hit rate vLLM counted.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from ..types import REPLICA_HEADER
from .serving import WORDS


def prefix_prompts(
    groups: int = 6, per_group: int = 4, words: int = 600, seed: int = 0
) -> list[tuple[int, str]]:
    """``(group, prompt)`` pairs, round-robin over the groups: a group's prompts share a prefix of
    ``words`` random words (about as many tokens) and differ in a short ending."""
    rng = random.Random(seed)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(groups)]
    return [
        (g, f"{prefixes[g]}\nQuestion {i} of group {g}: the next word?")
        for i in range(per_group)
        for g in range(groups)
    ]


@dataclass
class RoutingResult:
    """Where each group's requests went and what the prefix cache saved."""

    replicas_by_group: dict[int, list[str]]
    hit_rate: float  # prefix-cache hits / queries, in prompt tokens, over this workload

    @property
    def groups_on_one_replica(self) -> int:
        return sum(len(set(r)) == 1 for r in self.replicas_by_group.values())

    @property
    def replicas_used(self) -> int:
        return len({r for rs in self.replicas_by_group.values() for r in rs})


def run(
    base_url: str, model: str, prompts: list[tuple[int, str]], api_key: str | None = None
) -> RoutingResult:
    """Send ``prompts`` (one at a time, one token each) to ``model`` at ``base_url`` (the app's
    root); the hit rate comes from the app's ``/metrics`` before and after."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    by_group: dict[int, list[str]] = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        before = _prefix_cache(client, model)
        for group, prompt in prompts:
            response = client.post(
                "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
            )
            response.raise_for_status()
            by_group.setdefault(group, []).append(response.headers[REPLICA_HEADER])
        deadline = time.monotonic() + 30  # replicas publish their vllm: metrics every few seconds
        after = _prefix_cache(client, model)
        while after[0] - before[0] < _min_queries(prompts) and time.monotonic() < deadline:
            time.sleep(1.0)
            after = _prefix_cache(client, model)
    queries, hits = after[0] - before[0], after[1] - before[1]
    return RoutingResult(by_group, hits / queries if queries else 0.0)


def _min_queries(prompts: list[tuple[int, str]]) -> int:
    """A lower bound on the prompt tokens vLLM counts for ``prompts`` (one per word at least)."""
    return sum(len(p.split()) for _, p in prompts)


def _prefix_cache(client: Any, model: str) -> tuple[float, float]:
    """``(queries, hits)``: prompt tokens vLLM looked up in, and found in, its prefix caches,
    summed over ``model``'s replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    response = client.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        if family.name in totals:
            totals[family.name] += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("model_name") == model
            )
    return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]
