"""A real Prometheus (Debian's package) scrapes the Ray ingress; PromQL sees exactly the requests sent."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from outlines_vllm.launch import free_port
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
def prometheus(ray_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed: run scripts/system-deps.sh (make setup does)")
    folder: Path = tmp_path_factory.mktemp("prometheus")
    target = ray_server.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "outlines-vllm",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: target_up(url), 30, "Prometheus never scraped the ingress successfully")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Any, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    pytest.fail(message)


def target_up(url: str) -> bool:
    try:
        targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    return bool(targets) and all(t["health"] == "up" for t in targets)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert response["status"] == "success", response
    return response["data"]["result"]


def by_constraint(url: str) -> Counter[str]:
    promql = f'sum by (constraint) ({REQUESTS}{{model="{SERVED_NAME}", status="200"}})'
    return Counter({r["metric"]["constraint"]: round(float(r["value"][1])) for r in query(url, promql)})


def test_promql_counts_equal_the_requests_sent_by_constraint_kind(ray_server: Any, prometheus: str) -> None:
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

    wait_for(counted, 20, f"Prometheus shows {by_constraint(prometheus)}, expected {expected}")
    assert target_up(prometheus), "every scrape of the merged exposition must parse"
    # Each replica's own vllm: metrics reach Prometheus too, one series per replica.
    replicas = query(prometheus, "count by (replica) (vllm:num_requests_running)")
    assert len(replicas) == 2, replicas
    up = query(prometheus, f'sum(outlines_vllm_replica_up{{model="{SERVED_NAME}"}})')
    assert float(up[0]["value"][1]) == 2
