"""``--repeat K``: every configuration runs K times in alternating order, and each ratio is
reported as its median with the min-max over the repetitions."""

from __future__ import annotations

import pytest

from outlines_vllm.bench import report, stats
from outlines_vllm.bench.runner import _plan, _sampling, _workloads
from outlines_vllm.bench.scenario import Scenario


def test_plan_repeats_every_run_and_alternates_the_order() -> None:
    scenario = Scenario(workloads=["json_fixed", "none"], repeat=3)
    plan = _plan(scenario, "offline")
    once = _plan(Scenario(workloads=["json_fixed", "none"]), "offline")
    assert len(plan) == 3 * len(once)
    strip = lambda runs: [(r["workload"], r["path"]) for r in runs]  # noqa: E731
    assert strip(plan[: len(once)]) == strip(once)
    assert strip(plan[len(once) : 2 * len(once)]) == strip(once)[::-1]
    assert [r["repeat"] for r in plan] == [0] * len(once) + [1] * len(once) + [2] * len(once)
    assert all(r["repeats"] == 3 for r in plan)


def test_repeats_draw_new_prompts_and_seeds_while_the_paths_of_one_repeat_share_them() -> None:
    scenario = Scenario(workloads=["json_fixed"], paths=["raw", "package"], repeat=2)
    runs = list(_workloads(scenario, _plan(scenario, "offline"), "offline"))
    prompts = {
        (run["repeat"], run["path"]): [r.messages for r in workload.measured] for run, workload in runs
    }
    seeds = {(run["repeat"], run["path"]): _sampling(scenario, run).seed for run, _ in runs}
    for repeat in (0, 1):
        assert prompts[repeat, "raw"] == prompts[repeat, "package"]
        assert seeds[repeat, "raw"] == seeds[repeat, "package"]
    assert prompts[0, "raw"] != prompts[1, "raw"]
    assert seeds[0, "raw"] != seeds[1, "raw"]


def test_repeat_must_be_positive() -> None:
    with pytest.raises(ValueError, match="repeat >= 1"):
        Scenario(repeat=0)


def _run(path: str, workload: str, rate: float, repeat: int) -> dict:
    return {
        "mode": "offline",
        "path": path,
        "backend": "auto",
        "workload": workload,
        "main": True,
        "repeat": repeat,
        "repeats": 3,
        "concurrency": None,
        "rate": None,
        "requests_per_s": rate,
        "output_tokens_per_s": rate * 30,
        "valid_objects_per_s": rate,
        "validity": 1.0,
        "tokens_per_valid_object": 30.0,
        "latency_s": {"p50": 1 / rate},
        "valid": 8,
        "sent": 8,
        "failed": 0,
        "output_tokens": {"mean": 30.0},
        "ttft_s": {"p50": 0.1},
    }


RUNS = [
    run
    for k, (raw, package) in enumerate([(2.0, 1.0), (2.0, 2.0), (3.0, 2.0)])
    for run in (_run("raw", "json_fixed", raw, k), _run("package", "json_fixed", package, k))
]


def test_ratios_are_medians_with_min_max_over_repetitions() -> None:
    found = stats.comparisons(RUNS)
    row = next(r for r in found["package_overhead"] if r["workload"] == "json_fixed")
    assert row["overhead_ratio"] == 1.5  # ratios 2.0, 1.0, 1.5
    assert row["spread"]["overhead_ratio"] == [1.0, 2.0]
    assert row["repeats"] == 3
    text = report.ratios(found)
    assert "(1.000-2.000, 3 runs)" in text


def test_single_runs_keep_plain_ratios() -> None:
    found = stats.comparisons([r for r in RUNS if r["repeat"] == 0])
    row = next(r for r in found["package_overhead"] if r["workload"] == "json_fixed")
    assert row["overhead_ratio"] == 2.0
    assert "spread" not in row


def test_summary_table_shows_the_spread_of_repeated_runs() -> None:
    text = report.summary({"runs": RUNS})
    assert "2.00 (2.00-3.00) / 2.00 (1.00-2.00)" in text  # valid obj/s raw / package
    assert "24/24 / 24/24" in text
