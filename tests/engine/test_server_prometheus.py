"""A real Prometheus (Debian's package) scrapes the Ray ingress; PromQL sees exactly the requests sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.prometheus import Prometheus, wait_for
from tests.ray_app import SERVED_NAME

REQUESTS = "outlines_vllm_requests_total"
SENT = {"json": 3, "regex": 2, "choice": 2, "grammar": 1, "none": 2}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "json": {"structured_outputs": {"json": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
    "regex": {"structured_outputs": {"regex": "[0-9]{2}"}},
    "choice": {"structured_outputs": {"choice": ["yes", "no"]}},
    "grammar": {"structured_outputs": {"grammar": 'root ::= "ok" | "no"'}},
    "none": {},
}


@pytest.fixture(scope="module")
def prometheus(ray_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with Prometheus(tmp_path_factory.mktemp("prometheus")) as prometheus:
        prometheus.start([ray_server.base_url.removeprefix("http://")]).wait_until_up(1)
        yield prometheus


def by_constraint(prometheus: Prometheus) -> Counter[str]:
    promql = f'sum by (constraint) ({REQUESTS}{{model="{SERVED_NAME}", status="200"}})'
    return Counter({r["metric"]["constraint"]: round(float(r["value"][1])) for r in prometheus.query(promql)})


def test_promql_counts_equal_the_requests_sent_by_constraint_kind(
    ray_server: Any, prometheus: Prometheus
) -> None:
    before = by_constraint(prometheus)
    headers = {"Authorization": f"Bearer {ray_server.api_key}"}
    with httpx.Client(base_url=ray_server.base_url, headers=headers, timeout=120) as client:
        for kind, count in SENT.items():
            for _ in range(count):
                body = {"model": SERVED_NAME, "prompt": "Answer:", "max_tokens": 8, **CONSTRAINTS[kind]}
                response = client.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
    expected = before + Counter(SENT)

    def counted() -> bool:
        return all(by_constraint(prometheus)[kind] == n for kind, n in expected.items())

    assert wait_for(counted, 20), f"Prometheus shows {by_constraint(prometheus)}, expected {expected}"
    assert prometheus.targets_up(), "every scrape of the merged exposition must parse"
    # Each replica's own vllm: metrics reach Prometheus too, one series per replica.
    replicas = prometheus.query("count by (replica) (vllm:num_requests_running)")
    assert len(replicas) == 2, replicas
    up = prometheus.query(f'sum(outlines_vllm_replica_up{{model="{SERVED_NAME}"}})')
    assert float(up[0]["value"][1]) == 2
