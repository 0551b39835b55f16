"""The serving app with cheap dummy-weight engines: two models routed by name, autoscaling 1 -> 2 -> 1."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.prometheus import metric_sum, wait_for


def headers(app: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.api_key}"}


def test_two_models_are_listed_and_routed_by_name(tiny_ray_app: Any) -> None:
    with httpx.Client(base_url=tiny_ray_app.base_url, headers=headers(tiny_ray_app), timeout=60) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed == ["tiny-a", "tiny-b"]
        before = tiny_ray_app.metrics()
        for model in ("tiny-a", "tiny-b", "tiny-b"):
            reply = client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3})
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == model  # the engine that answered serves that name
        missing = client.post("/v1/completions", json={"model": "tiny-c", "prompt": "hi", "max_tokens": 3})
        assert missing.status_code == 404 and "tiny-a" in missing.text

    def counted() -> bool:
        after = tiny_ray_app.metrics()
        return all(
            metric_sum(after, "outlines_vllm_requests_total", model=m, status="200")
            - metric_sum(before, "outlines_vllm_requests_total", model=m, status="200")
            == n
            for m, n in (("tiny-a", 1), ("tiny-b", 2))
        )

    assert wait_for(counted, 15), "each model's replica counts the requests it served"
    replicas = {labels["replica"] for labels, _ in tiny_ray_app.metrics()["vllm:num_requests_running"]}
    assert len(replicas) == 2, f"one vllm: series per engine replica: {replicas}"


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(tiny_ray_app: Any) -> None:
    assert tiny_ray_app.healthy_replicas("tiny-a") == 1
    stop = threading.Event()
    body = {"model": "tiny-a", "prompt": "Count:", "max_tokens": 300, "min_tokens": 300, "ignore_eos": True}

    def load() -> None:
        with httpx.Client(
            base_url=tiny_ray_app.base_url, headers=headers(tiny_ray_app), timeout=120
        ) as client:
            while not stop.is_set():
                client.post("/v1/completions", json=body)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    try:
        up = wait_for(lambda: tiny_ray_app.healthy_replicas("tiny-a") == 2, 240, interval=2)
        scaled_up = time.monotonic() - started
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=150)
    assert up, f"no second replica after 240 s of load: {tiny_ray_app.replica_counts()}"
    idle = time.monotonic()
    down = wait_for(lambda: tiny_ray_app.healthy_replicas("tiny-a") == 1, 120, interval=2)
    assert down, f"still {tiny_ray_app.replica_counts()} 120 s after the load stopped"
    assert tiny_ray_app.healthy_replicas("tiny-b") == 1
    print(
        f"1 -> 2 replicas after {scaled_up:.0f} s of load, 2 -> 1 after {time.monotonic() - idle:.0f} s idle"
    )
