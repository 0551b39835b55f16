"""Kill one replica's vLLM engine under load: the service keeps answering and Serve replaces it."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import psutil

from tests.ray_app import SERVED_NAME

TOTAL = 100
KILL_AFTER = 20


def test_engine_killed_under_load_is_replaced_and_requests_succeed(ray_server: Any) -> None:
    victims = ray_server.engine_pids()
    assert len(victims) == 2, victims
    victim, pids = sorted(victims.items())[0]
    # openai retries connection errors and 5xx with backoff: what a client of an HA service does.
    client = openai.OpenAI(base_url=ray_server.base_url + "/v1", api_key=ray_server.api_key, max_retries=6)
    done = threading.Semaphore(0)

    def one(i: int) -> bool:
        try:
            response = client.chat.completions.create(
                model=SERVED_NAME,
                messages=[{"role": "user", "content": f"Is {i} even? Answer yes or no."}],
                max_tokens=4,
                extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
            )
            return response.choices[0].message.content in ("yes", "no")
        except openai.OpenAIError:
            return False
        finally:
            done.release()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(TOTAL)]
        for _ in range(KILL_AFTER):
            done.acquire()
        for pid in pids:  # the replica's engine processes (its engine core): SIGKILL
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        killed_at = time.monotonic()
        ok = sum(f.result() for f in futures)
    assert ok >= 0.99 * TOTAL, f"only {ok}/{TOTAL} requests succeeded"

    deadline = killed_at + 300
    while time.monotonic() < deadline:
        replicas = ray_server.engine_pids()
        if victim not in replicas and len(replicas) == 2 and ray_server.healthy_replicas() == 2:
            break
        time.sleep(2)
    else:
        raise AssertionError(
            f"replicas did not return to two: {ray_server.engine_pids()}, log:\n{ray_server.log_tail()}"
        )
    print(
        f"{ok}/{TOTAL} requests succeeded; the killed replica was replaced in {time.monotonic() - killed_at:.0f} s"
    )
