"""A tiny benchmark online (real server) and offline (real engine) on the default model: the
results file has every metric, validity is the schema's verdict, and the counts add up."""

import contextlib
import json
import re

import jsonschema
import pytest

from outlines_vllm.bench.report import PLOTS, write
from outlines_vllm.bench.runner import results, run_offline, run_online
from outlines_vllm.bench.scenario import Scenario
from outlines_vllm.bench.workloads import DATE_REGEX, PERSON_SCHEMA, SENTIMENTS

from ..conftest import SERVED_NAME

METRICS = {
    "sent", "succeeded", "failed", "valid", "invalid", "truncated", "validity", "truncation_rate",
    "error_rate", "duration_s", "requests_per_s", "output_tokens_per_s", "valid_objects_per_s",
    "ttft_s", "tpot_s", "itl_s", "latency_s", "output_tokens", "tokens_per_valid_object",
    "first_request", "errors", "invalid_reasons", "answers",
}  # fmt: skip
ENVIRONMENT = {"vllm_version", "device", "cpu_count", "model", "structured_output_backends", "packages"}


def _schema_says(workload: str, text: str) -> bool:
    """Validity by the workload's own rule, checked here independently of the package."""
    if workload in ("json_fixed", "none"):
        try:
            value = json.loads(text)
            if workload == "json_fixed" and isinstance(value, dict):  # the run's salt property
                value = {k: v for k, v in value.items() if not (k.startswith("x_") and isinstance(v, bool))}
            jsonschema.validate(value, PERSON_SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if workload == "regex":
        return re.fullmatch(DATE_REGEX, text) is not None
    return text in SENTIMENTS


def _check(document: dict, mode: str) -> None:
    assert set(document["environment"]) >= ENVIRONMENT
    runs = document["runs"]
    assert {(r["path"], r["workload"]) for r in runs} == {
        (p, w) for p in ("raw", "package") for w in ("json_fixed", "regex", "choice", "none")
    }
    for run in runs:
        assert "skipped" not in run, run.get("skipped")
        assert set(run) >= METRICS, METRICS - set(run)
        assert run["mode"] == mode
        assert run["sent"] == 3 == run["succeeded"] + run["failed"]
        assert run["valid"] <= run["succeeded"] and run["valid"] + run["invalid"] == run["succeeded"]
        assert run["failed"] == 0, run["errors"]
        assert run["requests_per_s"] > 0 and run["output_tokens"]["total"] > 0
        assert run["first_request"]["latency_s"] > 0
        for answer in run["answers"]:
            truncated = answer["finish_reason"] == "length"
            assert answer["valid"] == (not truncated and _schema_says(run["workload"], answer["text"]))
        if run["workload"] == "json_fixed":
            assert run["valid"] >= 2  # constrained JSON on the default model is valid
        assert run["ttft_s"]["p50"] > 0  # offline package runs too: the engine's request stats
        if run["workload"] == "json_fixed":
            assert run["tpot_s"]["p50"] > 0
    overhead = [c for c in document["comparisons"]["package_overhead"] if c["mode"] == mode]
    assert overhead and all(c["overhead_ratio"] > 0 for c in overhead)
    assert any(c["workload"].startswith("all") for c in overhead)
    assert document["comparisons"]["constrained_vs_unconstrained"]


@pytest.fixture(scope="module")
def tiny() -> Scenario:
    return Scenario.load("tiny")


def test_tiny_online_benchmark_writes_a_complete_consistent_report(vllm_server, tiny, tmp_path):
    summaries = run_online(vllm_server.base_url, tiny, model=SERVED_NAME)
    files = write(results(summaries, tiny, model=SERVED_NAME, base_url=vllm_server.base_url), tmp_path)
    document = json.loads(files["json"].read_text())
    _check(document, "online")
    assert document["environment"]["server_vllm_version"]
    streamed = [r for r in document["runs"] if r["workload"] == "json_fixed"]
    assert all(r["itl_s"]["p50"] > 0 and r["tpot_s"]["p50"] > 0 for r in streamed)
    assert "Overhead of this package vs the raw path, online" in files["markdown"].read_text()
    assert all((tmp_path / name).stat().st_size > 1000 for name in PLOTS)


def test_tiny_offline_benchmark_writes_a_complete_consistent_report(llm, tiny, tmp_path):
    summaries = run_offline(llm, tiny)
    files = write(results(summaries, tiny, model=llm.llm_engine.model_config.model), tmp_path)
    document = json.loads(files["json"].read_text())
    _check(document, "offline")
    assert "Overhead of this package vs the raw path, offline" in files["markdown"].read_text()


def test_repeated_offline_runs_report_median_ratios_with_their_spread(llm, tiny, tmp_path):
    scenario = Scenario.load("tiny", workloads=["json_fixed", "none"], repeat=2)
    summaries = run_offline(llm, scenario)
    assert sorted({(r["repeat"], r["path"], r["workload"]) for r in summaries}) == [
        (k, p, w) for k in (0, 1) for p in ("package", "raw") for w in ("json_fixed", "none")
    ]
    files = write(results(summaries, scenario, model=llm.llm_engine.model_config.model), tmp_path)
    document = json.loads(files["json"].read_text())
    overhead = [c for c in document["comparisons"]["package_overhead"] if c["workload"] == "json_fixed"]
    assert overhead[0]["repeats"] == 2
    low, high = overhead[0]["spread"]["overhead_ratio"]
    assert low <= overhead[0]["overhead_ratio"] <= high
    assert "repeated 2 times" in files["markdown"].read_text()


def test_compliance_judges_real_schemas_through_the_engine(llm, tmp_path):
    from outlines_vllm.bench import compliance
    from outlines_vllm.bench.paths import Sampling

    rows = compliance.sample(["Github_trivial", "Glaiveai2K"], 2, seed=0)
    records = compliance.run(lambda: contextlib.nullcontext(llm), rows, "auto", Sampling(256, 0.0, 0))
    assert [(r["set"], r["id"]) for r in records] == [(r["set"], r["id"]) for r in rows]
    table = compliance.aggregate(records)["auto"]
    assert table["all"]["schemas"] == 4
    assert table["all"]["accepted"] >= 1 and table["all"]["valid"] >= 1
    for record in records:
        if record["accepted"] and record["judged"]:
            assert record["valid"] == (not record["truncated"] and record["reason"] is None)


def test_the_raw_offline_path_counts_a_refused_request_and_answers_the_rest(llm):
    """``LLM.chat`` refuses a whole batch for one request vLLM's check refuses: the raw path
    counts that request as an error and still sends the others, as the package's batch does."""
    from outlines_vllm.bench.paths import Sampling, offline_raw
    from outlines_vllm.bench.workloads import Request
    from outlines_vllm.types import output_spec

    from ..runaway import nested

    person, deep = output_spec(PERSON_SCHEMA), output_spec(nested(34))  # the schema: too deep
    chat = [{"role": "user", "content": "Describe a person as JSON."}]
    requests = [Request(chat, person, person), Request(chat, deep, deep), Request(chat, person, person)]
    records = offline_raw(llm, requests, Sampling(max_tokens=24, temperature=0.0, seed=0))
    assert [r.ok for r in records] == [True, False, True]
    assert "nest" in records[1].error.lower(), records[1].error
    assert records[0].text.startswith("{") and records[0].output_tokens
