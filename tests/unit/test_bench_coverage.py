"""``bench coverage``: the worker pool survives hangs and crashes, records aggregate honestly,
the reports say what they measured, and a small real run compiles with all three backends."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from outlines_vllm.bench import coverage, coverage_report
from outlines_vllm.bench.workerpool import WorkerPool


def work(task: str) -> str:
    """A pool task (module level: workers import it)."""
    if task == "spin":  # hangs using the CPU
        while True:
            pass
    if task == "sleep":  # hangs without using the CPU
        time.sleep(600)
    if task == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if task == "raise":
        raise ValueError("bad input")
    return task.upper()


def test_pool_times_out_hangs_counts_crashes_and_keeps_going() -> None:
    tasks = ["a", "spin", "b", "segfault", "raise", "sleep", "c", "d"]
    with WorkerPool(2, wall_factor=1.0, grace=2.0) as pool:
        outcomes = {o.index: o for o in pool.run(work, tasks, timeout=1.0)}
        restarts = pool.restarts
    assert sorted(outcomes) == list(range(len(tasks)))
    status = {tasks[i]: o.status for i, o in outcomes.items()}
    assert status == {
        "a": "ok", "spin": "timeout", "b": "ok", "segfault": "crash",
        "raise": "error", "sleep": "timeout", "c": "ok", "d": "ok",
    }  # fmt: skip
    assert [outcomes[i].value for i in (0, 2, 6, 7)] == ["A", "B", "C", "D"]
    assert "ValueError: bad input" in outcomes[4].error
    assert "-11" in outcomes[3].error  # killed by SIGSEGV
    assert restarts == 3  # two time-outs and a crash, each replaced


def test_pool_takes_tasks_lazily_and_per_task_limits() -> None:
    given = []

    def tasks():
        for t in ["x", "spin", "y"]:
            given.append(t)
            yield t

    with WorkerPool(1, grace=2.0) as pool:
        outcomes = list(pool.run(work, tasks(), timeout=lambda t: 0.5 if t == "spin" else 60))
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok"]
    assert given == ["x", "spin", "y"]


def test_pool_rejects_no_workers() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool(0)


def _record(backend: str, variant: str, status: str, ms: float | None = None, **extra: object) -> dict:
    record = {"set": "Github_easy", "id": extra.pop("id", "o1"), "backend": backend, "variant": variant}
    record["status"] = status
    if status == "accepted":
        record["compile_ms"] = ms
    else:
        record["reason"] = extra.pop("reason", status)
        record["error"] = extra.pop("error", f"{status}!")
    return record | extra


def _run(records: list[dict]) -> dict:
    options = coverage.Options(sets=["Github_easy", "Kubernetes"], backends=["xgrammar", "outlines"])
    return {
        "options": coverage.asdict(options),
        "model": "/models/SmolLM2",
        "seconds": 61.0,
        "worker_restarts": 2,
        "selected": 5,
        "finished": 4,
        "command": "outlines-vllm bench coverage",
        "records": records,
    }


RECORDS = [
    _record("xgrammar", "json", "accepted", 10.0, mask_us=[5.0, 15.0]),
    _record("xgrammar", "json", "accepted", 30.0, id="o2"),
    _record("xgrammar", "json", "refused", reason="unsupported", error="VLLMValidationError: not supported"),
    _record("xgrammar", "json", "crash", id="o4"),
    _record("xgrammar", "package", "refused", reason="client", sent=None),
    _record("outlines", "json", "timeout"),
    _record("outlines", "json", "accepted", 2000.0, id="o2"),
]


def test_summarise_counts_add_up_and_percentiles_cover_accepted_only() -> None:
    summary = coverage.summarise(
        [r for r in RECORDS if r["backend"] == "xgrammar" and r["variant"] == "json"]
    )
    assert summary["schemas"] == 4
    assert summary["accepted"] == 2
    assert summary["refused"] == {"unsupported": 1, "crash": 1}
    assert (summary["timeouts"], summary["crashes"]) == (0, 1)
    assert summary["compile_ms"] == {"p50": 20.0, "p90": 28.0, "p99": pytest.approx(29.8), "max": 30.0}
    assert summary["mask_us"]["schemas"] == 1
    assert summary["mask_us"]["masks"] == 2
    assert summary["mask_us"]["max"] == 15.0


def test_identical_requests_share_a_compile_key_outlines_ignores_whitespace_options() -> None:
    schema = {"type": "object"}
    assert coverage._key("outlines", {"json": schema}) == coverage._key(
        "outlines", {"json": schema, "disable_any_whitespace": True}
    )
    assert coverage._key("xgrammar", {"json": schema}) != coverage._key(
        "xgrammar", {"json": schema, "disable_any_whitespace": True}
    )


def test_options_refuse_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        coverage.Options(backends=["lmfe"])
    with pytest.raises(ValueError, match="unknown set"):
        coverage.Options(sets=["Github_nightmare"])
    assert coverage.Options(timeout=60).limit("outlines") == coverage.VLLM_REGEX_TIMEOUT_S
    assert coverage.Options(timeout=60).limit("xgrammar") == 60
    assert coverage.Options(timeout=60, outlines_timeout=1.5).limit("outlines") == 1.5
    with pytest.raises(ValueError, match="positive"):
        coverage.Options(outlines_timeout=0)


def test_select_is_seeded_and_marks_mask_samples_per_set() -> None:
    options = coverage.Options(sets=["Github_trivial", "Kubernetes"], per_set=4, mask_per_set=1)
    first, again = coverage.select(options), coverage.select(options)
    assert [s["id"] for s in first] == [s["id"] for s in again]
    assert len(first) == 8
    assert sorted(s["set"] for s in first if s["mask"]) == ["Github_trivial", "Kubernetes"]


def test_reports_write_json_markdown_and_plot(tmp_path) -> None:
    coverage_report.save_run(_run(RECORDS), tmp_path)
    assert coverage_report.publish(coverage_report.load_run(tmp_path), tmp_path) == 0
    document = json.loads((tmp_path / "results.json").read_text())
    xgr = document["results"]["xgrammar/json"]
    assert xgr["sets"]["Github_easy"]["accepted"] == 2
    assert xgr["sets"]["Kubernetes"]["schemas"] == 0
    assert document["results"]["outlines/json"]["all"]["timeouts"] == 1
    assert set(document["versions"]) >= {"xgrammar", "llguidance", "outlines_core"}
    text = (tmp_path / "results.md").read_text()
    assert "| xgrammar | json | 4 | 2 (50%) | 1 unsupported | 0 | 1 | 20 ms |" in text
    assert "5,216 (51%)" in text and "guidance-ai/jsonschemabench" in text
    assert "Partial run" in text  # 4 of 5 finished
    assert "9,557" in text and "not checked for correctness" in text
    assert (tmp_path / "compile_times.png").stat().st_size > 1000


def test_load_run_says_what_to_do_without_records(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="bench coverage --out"):
        coverage_report.load_run(tmp_path)


def test_a_small_real_run_compiles_with_every_backend() -> None:
    """Engine-free: two small schemas, all three backends, every variant, through the pool."""
    from outlines_vllm.default_model import prepare

    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    rows = [
        {"set": "Github_trivial", "id": "person", "schema": person},
        {"set": "Github_trivial", "id": "tags", "schema": {"type": "array", "items": {"enum": ["a", "b"]}}},
    ]
    options = coverage.Options(sets=["Github_trivial"], mask_steps=4, timeout=60)
    result = coverage.run(options, str(prepare()), progress=False, schemas=rows)
    assert result["finished"] == 2
    records = result["records"]
    assert len(records) == 2 * 3 * 3
    plain = [r for r in records if r["variant"] == "json"]
    assert {r["backend"] for r in plain if r["status"] == "accepted"} == {"xgrammar", "guidance", "outlines"}
    for record in records:
        assert record["status"] in ("accepted", "refused", "timeout", "crash")
        if record["status"] == "accepted":
            assert record["compile_ms"] >= 0
    assert any(r.get("mask_us") for r in plain if r["status"] == "accepted")
    sent = {(r["id"], r["backend"], r["variant"]): (r.get("sent"), r.get("fallback")) for r in records}
    # engines started as ours: the schema, compact engine-wide; the regex form is the fallback
    for backend in ("xgrammar", "guidance"):
        assert sent["person", backend, "package"] == (["disable_any_whitespace", "json"], "package-vanilla")
    # outlines has no engine-wide whitespace option: the regex, else the plain schema
    assert sent["person", "outlines", "package"] == (["regex"], "json")
    assert sent["person", "xgrammar", "package-vanilla"] == (["regex"], "json")


def test_package_with_fallback_takes_the_fallback_result_when_the_first_form_is_refused() -> None:
    records = [
        _record("guidance", "package-vanilla", "accepted", 2.0, sent=["regex"], fallback="json"),
        _record(
            "guidance", "package", "refused", reason="invalid", sent=["json"], fallback="package-vanilla"
        ),
        _record("guidance", "package-vanilla", "refused", id="o2", reason="unsupported", fallback="json"),
        _record("guidance", "package", "accepted", 5.0, id="o2", sent=["json"], fallback="package-vanilla"),
        _record("guidance", "json", "accepted", 2.0, id="o3"),
        _record("guidance", "package", "refused", id="o3", reason="client", sent=None),
        _record("guidance", "json", "accepted", 2.0, id="o4"),
        _record("guidance", "package", "refused", id="o4", reason="invalid", sent=["json"]),  # no fallback
    ]
    derived = {(r["id"], r["variant"]): r["status"] for r in coverage.with_fallback(records)}
    assert derived == {
        ("o1", "package-vanilla+fallback"): "accepted",
        ("o1", "package+fallback"): "accepted",  # the schema refused, the regex form accepted
        ("o2", "package-vanilla+fallback"): "refused",  # its fallback (json) was not compiled
        ("o2", "package+fallback"): "accepted",
        ("o3", "package+fallback"): "refused",  # output_spec refused: nothing is sent
        ("o4", "package+fallback"): "refused",  # nothing else to send
    }
