"""Shared fixtures. Engines are slow to start (about 35 s each here), so each kind is started once
per session and shared: ``llm`` (an embedded ``vllm.LLM``), ``vllm_server`` (a real vLLM OpenAI
server on loopback), ``ray_server`` and ``tiny_ray_app`` (``outlines-vllm serve``).

Tests that use them are marked ``engine`` automatically; ``pytest -m "not engine"`` runs the
fast unit tests alone.

An engine holds 1-3 GB (its API, engine-core and worker processes), and with every session
engine alive at once the tiny-model Ray apps no longer fitted in 24 GiB: Ray's memory monitor
killed their replicas until the start timed out. So modules run in stages (no engine, embedded
engines, a vLLM server, the Ray app, the tiny-model apps), and each session engine is stopped
right after the last test that needs it: a stage never carries the engines of the one before.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

SERVED_NAME = "smollm2"
ENGINE_FIXTURES = {"llm", "async_llm", "model_path", "vllm_server", "openai_client", "async_openai_client"}
TINY_FIXTURES = {"tiny_model_path", "tiny_ray_app"}
T = TypeVar("T")


def _stage(fixtures: set[str]) -> int:
    """When a test runs: 0 no engine, 1 embedded engines (and the vLLM server), 2 the vLLM
    server, 3-4 the Ray app (with the server first, so the server stops early), 5 tiny apps."""
    if fixtures & TINY_FIXTURES:
        return 5
    if "ray_server" in fixtures:
        return 3 if "vllm_server" in fixtures else 4
    if fixtures & {"llm", "async_llm"}:
        return 1
    return 2 if "vllm_server" in fixtures else 0


@pytest.hookimpl(trylast=True)  # after pytest's own reordering
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    used: dict[str, set[str]] = {}  # fixtures of each module's tests
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if ENGINE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.engine)
        used.setdefault(item.nodeid.split("::")[0], set()).update(fixtures)
    items.sort(key=lambda item: _stage(used[item.nodeid.split("::")[0]]))  # stable: modules stay whole


_users: Counter[str] = Counter()  # tests still to run, per session engine
_stops: dict[str, Callable[[], object]] = {}  # how to stop each session engine now running


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:  # after -k / -m deselection
        _users.update(set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    for name in set(getattr(item, "fixturenames", ())) & set(_stops):
        _users[name] -= 1
        if _users[name] <= 0:
            _stops.pop(name)()  # its checks (nothing left running) fail this test's teardown
    return result


def until_last_user(name: str, value: T, stop: Callable[[], object]) -> Iterator[T]:
    """Body of the session fixture ``name``: give ``value``, and ``stop`` it after the last
    test that uses it (or at the end of the session, whichever comes first)."""
    once = functools.cache(stop)
    _stops[name] = once
    try:
        yield value
    finally:
        _stops.pop(name, None)
        once()


@pytest.fixture(scope="session")
def model_path() -> Path:
    from outlines_vllm.default_model import prepare

    return prepare()


@pytest.fixture(scope="session")
def llm(model_path: Path) -> Iterator[object]:
    """One embedded engine for the whole session, its compute threads on core 0."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
    from vllm import LLM

    from outlines_vllm.launch import engine_kwargs

    # Per-request stats on (TTFT, time per output token): the benchmark tests read them.
    engine = LLM(str(model_path), seed=0, disable_log_stats=False, **engine_kwargs())
    yield from until_last_user("llm", engine, engine.llm_engine.engine_core.shutdown)


@pytest.fixture(scope="session")
def async_llm(model_path: Path) -> Iterator[object]:
    """One embedded async engine (vLLM's ``AsyncLLM``) for the session, its threads on core 1.

    Started through ``outlines_vllm.load(folder, async_=True)`` (the offline half of the
    switch), outside the event loop: vLLM starts its output handler on the session loop at the
    first request. Shut down (engine-core process included) after its last test.
    """
    from outlines_vllm import load

    previous = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    try:
        engine = load(model_path, async_=True, seed=0).engine
    finally:
        if previous is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = previous
    yield from until_last_user("async_llm", engine, engine.shutdown)


@pytest.fixture(scope="session")
def vllm_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real vLLM OpenAI-compatible server on a free loopback port, its threads on core 1."""
    from outlines_vllm.launch import LocalServer, group_alive

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = LocalServer(
        model_path, served_model_name=SERVED_NAME, log_path=log, env={"VLLM_CPU_OMP_THREADS_BIND": "1"}
    )
    server.start()
    pgid = server.process.pid

    def stop() -> None:
        server.stop()
        # No process of the server's group (API server, engine core, workers) outlives the run.
        assert not group_alive(pgid), f"processes of the vLLM server group {pgid} are still running"

    yield from until_last_user("vllm_server", server, stop)


@pytest.fixture(scope="session")
def openai_client(vllm_server: object) -> object:
    import openai

    return openai.OpenAI(base_url=vllm_server.base_url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="session")
def async_openai_client(vllm_server: object) -> object:
    import openai

    return openai.AsyncOpenAI(base_url=vllm_server.base_url + "/v1", api_key="none", max_retries=0)


ENGINE_FIXTURES.add("ray_server")


@pytest.fixture(scope="session")
def ray_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``outlines-vllm serve``: Ray Serve with two CPU replicas of the default model (one core
    each) behind the ingress, API key ``ray_server.api_key``; stopped at the end (a request in
    flight then must still complete) with every replica's engine process."""
    from tests.ray_app import RayApp

    app = RayApp(model_path, tmp_path_factory.mktemp("ray-app") / "serve.log").start()

    def stop() -> None:
        in_flight = app.slow_request()
        app.close()
        assert in_flight.result(timeout=120) == 200, "stopping the app must drain in-flight requests"

    yield from until_last_user("ray_server", app, stop)


ENGINE_FIXTURES.add("tiny_ray_app")
TINY_MODELS = ("tiny-a", "tiny-b")


@pytest.fixture(scope="session")
def tiny_model_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer dummy-weight model with the default model's tokenizer (no weights on disk):
    engines that start fast and use little memory, for the serving tests that need several."""
    from outlines_vllm.bench.serving import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-model"), model_path)


@pytest.fixture(scope="session")
def tiny_ray_app(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``outlines-vllm serve --config``: two dummy-weight models in one app, ``tiny-a``
    autoscaling 1-2 replicas on short delays, ``tiny-b`` one replica (half a core each)."""
    from tests.ray_app import RayApp

    engine = {"load_format": "dummy"}
    common = {"model": str(tiny_model_path), "engine": engine, "replica_cpus": 0.5}
    config = {
        "models": [
            {
                **common,
                "name": "tiny-a",
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 2,
                "downscale_delay_s": 6,
            },
            {**common, "name": "tiny-b", "replicas": 1},
        ]
    }
    log = tmp_path_factory.mktemp("tiny-ray-app") / "serve.log"
    app = RayApp(None, log, config=config, expect={"tiny-a": 1, "tiny-b": 1}).start()
    yield from until_last_user("tiny_ray_app", app, app.close)
