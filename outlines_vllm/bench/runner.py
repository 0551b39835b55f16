"""Run a scenario online (a server URL), offline (an embedded ``vllm.LLM``) or both on a local
model (an engine, then a ``LocalServer``), one structured-output backend after another.

Each function returns run summaries (``stats.summarise``); ``results`` wraps them with the
environment and the comparisons. Engines are started here only by ``run_local`` and the
offline entry point when given a path; callers that pass an engine keep ownership of it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..engine_info import COMPACT_BACKENDS, engine_compact
from . import load, paths
from .environment import environment
from .paths import Sampling
from .scenario import Scenario
from .stats import comparisons, summarise
from .workloads import Workload, build

# Engines and servers the benchmark starts itself run without prefix caching: raw and package
# runs send the same prompts, and a cache filled by the first would flatter the second.
ENGINE_OPTIONS: dict[str, Any] = {"enable_prefix_caching": False, "disable_log_stats": False}


def _plan(scenario: Scenario, mode: str) -> list[dict[str, Any]]:
    """The runs of one mode, in the order they run: every workload at the main load (``main``:
    the runs the comparisons use), then, online, the concurrency sweep and the Poisson run."""

    order = 0

    def runs(workload: str, concurrency: int | None, rate: float | None = None) -> list[dict[str, Any]]:
        # Raw and package take turns at going first, so neither always meets the warmer engine.
        nonlocal order
        order += 1
        main = concurrency == (scenario.concurrency if mode == "online" else None) and rate is None
        return [
            {"workload": workload, "path": path, "concurrency": concurrency, "rate": rate, "main": main}
            for path in (scenario.paths if order % 2 else scenario.paths[::-1])
        ]

    if mode == "offline":
        plan = [run for workload in scenario.workloads for run in runs(workload, None)]
    else:
        plan = [run for workload in scenario.workloads for run in runs(workload, scenario.concurrency)]
        for workload in scenario.sweep.get("workloads", []):
            for level in scenario.sweep.get("concurrency", []):
                if level != scenario.concurrency and workload in scenario.workloads:
                    plan += runs(workload, level)
        if scenario.rate:
            plan += runs("json_fixed", scenario.concurrency * 4, scenario.rate)
    if scenario.repeat == 1:
        return plan
    # Repetitions run the plan forwards, then backwards, ...: no run always comes first or last.
    return [
        run | {"repeat": k, "repeats": scenario.repeat}
        for k in range(scenario.repeat)
        for run in (plan if k % 2 == 0 else plan[::-1])
    ]


def _workloads(scenario: Scenario, plan: list[dict[str, Any]], mode: str) -> Iterator[tuple[dict, Workload]]:
    nonce = uuid.uuid4().hex[:6]  # new grammars for every invocation: first requests compile
    for index, run in enumerate(plan):
        yield (
            run,
            build(
                run["workload"],
                requests=scenario.requests,
                warmup=scenario.warmup,
                seed=_seed(scenario, run),
                salt=f"{nonce}{mode[:2]}{index}",
                jsonschemabench=scenario.jsonschemabench,
            ),
        )


def _seed(scenario: Scenario, run: dict[str, Any]) -> int:
    """The seed of one run's prompts and sampling. The paths compared within a repetition share
    it; each repetition moves it on, so repeats draw new prompts and answers and the spread of a
    ratio covers what the answers vary, not only the timing."""
    return scenario.seed + 1000 * run.get("repeat", 0)


def _sampling(scenario: Scenario, run: dict[str, Any] | None = None) -> Sampling:
    return Sampling(scenario.max_tokens, scenario.temperature, _seed(scenario, run or {}))


# --- online --------------------------------------------------------------------------------------


def run_online(
    base_url: str,
    scenario: Scenario,
    *,
    model: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """Every online run of ``scenario`` against the OpenAI-compatible server at ``base_url``."""
    return asyncio.run(_online(base_url.rstrip("/"), scenario, model, api_key, backend))


async def _online(
    base_url: str, scenario: Scenario, model: str | None, api_key: str | None, backend: str
) -> list[dict[str, Any]]:
    import openai

    root = base_url.removesuffix("/v1")
    client = openai.AsyncOpenAI(
        base_url=root + "/v1", api_key=api_key or os.environ.get("OPENAI_API_KEY", "none"), max_retries=0
    )
    model = model or (await client.models.list()).data[0].id
    sampling = _sampling(scenario)
    info = await client.get(root + "/version", cast_to=object)
    compact = engine_compact(info.get("structured_outputs") if isinstance(info, dict) else None)
    senders: dict[str, load.SendOne] = {
        "raw": lambda request, seed: paths.online_raw(client, model, request, sampling, seed, compact)
    }
    if "package" in scenario.paths:
        from outlines_vllm import from_vllm

        package = from_vllm(client, model)
        senders["package"] = lambda request, seed: paths.online_package(package, request, sampling, seed)
    summaries = []
    plan = _plan(scenario, "online")
    for run, workload in tqdm(list(_workloads(scenario, plan, "online")), desc="online runs", unit="run"):
        labels = {"mode": "online", "backend": backend, **run}
        measured = await load.run_online(
            senders[run["path"]],
            workload,
            concurrency=run["concurrency"],
            rate=run["rate"],
            seed=_seed(scenario, run),
            desc=f"{run['path']} {run['workload']} c={run['concurrency']}",
        )
        summaries.append(summarise(workload, measured, labels))
    await client.close()
    return summaries


# --- offline -------------------------------------------------------------------------------------


def run_offline(llm: Any, scenario: Scenario, *, backend: str = "auto") -> list[dict[str, Any]]:
    """Every offline run of ``scenario`` on the embedded engine ``llm`` (a ``vllm.LLM``)."""
    senders: dict[str, Any] = {"raw": partial(paths.offline_raw, llm)}
    if "package" in scenario.paths:
        from outlines_vllm import from_vllm_offline

        senders["package"] = partial(paths.offline_package, from_vllm_offline(llm))
    summaries = []
    plan = _plan(scenario, "offline")
    for run, workload in tqdm(list(_workloads(scenario, plan, "offline")), desc="offline runs", unit="run"):
        labels = {"mode": "offline", "backend": backend, **run}
        send = partial(senders[run["path"]], sampling=_sampling(scenario, run))
        llm.reset_prefix_cache()  # a shared engine may cache prompts; each run starts cold
        summaries.append(summarise(workload, load.run_offline(send, workload), labels))
    return summaries


@contextmanager
def offline_engine(
    model: str | os.PathLike[str], *, backend: str = "auto", seed: int = 0, compact: bool = False
) -> Iterator[Any]:
    """An embedded engine that logs per-request stats (TTFT, TPOT), shut down on exit."""
    from vllm import LLM

    from ..launch import engine_kwargs

    llm = LLM(
        str(model),
        seed=seed,
        **engine_kwargs(
            **ENGINE_OPTIONS, structured_outputs_config=structured_outputs_config(backend, compact)
        ),
    )
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def structured_outputs_config(backend: str, compact: bool) -> dict[str, Any]:
    """vLLM's own configuration for ``backend`` (the raw path is what plain vLLM does), or, with
    ``compact`` and a backend that takes it, JSON whitespace disabled engine-wide as ours have."""
    if compact and backend in COMPACT_BACKENDS:
        return {"backend": backend, "disable_any_whitespace": True}
    return {"backend": backend}


def run_local(
    model: str | os.PathLike[str], scenario: Scenario, *, log_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Offline then online (a ``LocalServer``) on ``model``, once per backend of the scenario."""
    from ..launch import LocalServer

    summaries: list[dict[str, Any]] = []
    for backend in scenario.backends:
        if "offline" in scenario.modes:
            print(f"[bench] offline, backend {backend}: starting an embedded engine on {model}", flush=True)
            with offline_engine(
                model, backend=backend, seed=scenario.seed, compact=scenario.compact_engine
            ) as llm:
                summaries += run_offline(llm, scenario, backend=backend)
        if "online" in scenario.modes:
            print(f"[bench] online, backend {backend}: starting a local vLLM server", flush=True)
            log = Path(log_dir) / f"server-{backend}.log" if log_dir else None
            with LocalServer(
                model,
                served_model_name="bench",
                extra_args=["--no-enable-prefix-caching"],
                log_path=log,
                structured_outputs_config=structured_outputs_config(backend, scenario.compact_engine),
            ) as server:
                summaries += run_online(server.base_url, scenario, model="bench", backend=backend)
    return summaries


def results(
    summaries: list[dict[str, Any]],
    scenario: Scenario,
    *,
    model: str,
    base_url: str | None = None,
    command: str | None = None,
    engine_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document: environment, scenario, every run, and the comparison ratios.
    ``engine_options`` are the options of engines the benchmark started (None: not ours)."""
    return {
        "command": command,
        "engine_options": engine_options,
        "environment": environment(model=model, base_url=base_url, backends=scenario.backends),
        "scenario": scenario.as_dict(),
        "runs": summaries,
        "comparisons": comparisons(summaries),
    }
