"""Prefix-affinity routing (``routing: prefix_affinity``) against balanced routing, in one Ray
app of two dummy-weight models with two replicas each: requests sharing a long prompt prefix
stay on one replica, and the prefix cache hits more than under balanced routing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outlines_vllm.bench import routing

AFFINITY, BALANCED = "tiny-affinity", "tiny-balanced"


@pytest.fixture(scope="module")
def routing_app(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.ray_app import RayApp

    common = {
        "model": str(tiny_model_path),
        "engine": {"load_format": "dummy"},
        "replica_cpus": 0.5,
        "replicas": 2,
    }
    config = {
        "models": [
            {**common, "name": AFFINITY, "routing": "prefix_affinity"},  # HAProxy asks the router
            {**common, "name": BALANCED},
        ]
    }
    log = tmp_path_factory.mktemp("routing-app") / "serve.log"
    app = RayApp(None, log, config=config, expect={AFFINITY: 2, BALANCED: 2}).start()
    try:
        yield app
    finally:
        app.close()


def test_prefix_affinity_keeps_each_prefix_on_one_replica_and_raises_the_hit_rate(routing_app: Any) -> None:
    groups, per_group = 6, 4
    affinity = routing.run(
        routing_app.base_url, AFFINITY, routing.prefix_prompts(groups, per_group, seed=1), routing_app.api_key
    )
    balanced = routing.run(
        routing_app.base_url, BALANCED, routing.prefix_prompts(groups, per_group, seed=2), routing_app.api_key
    )
    print(
        f"\nprefix-cache hit rate: prefix_affinity {affinity.hit_rate:.1%}, balanced {balanced.hit_rate:.1%}"
    )
    assert affinity.groups_on_one_replica == groups, affinity.replicas_by_group
    assert affinity.replicas_used == 2, "new prefixes must still spread over both replicas"
    # Only each group's first request misses its prefix: hits come near (n-1)/n of the prompt.
    assert affinity.hit_rate > 0.6 * (per_group - 1) / per_group, affinity
    assert balanced.replicas_used == 2
    assert affinity.hit_rate > balanced.hit_rate or balanced.groups_on_one_replica == groups, (
        affinity,
        balanced,
    )
