"""The benchmark's judge counts known-invalid answers as invalid, and its summaries add up."""

import json

import pytest

from outlines_vllm.bench import report
from outlines_vllm.bench.load import Measured, arrivals
from outlines_vllm.bench.paths import Record, _package_record
from outlines_vllm.bench.runner import _plan
from outlines_vllm.bench.scenario import Scenario
from outlines_vllm.bench.stats import comparisons, percentiles, summarise
from outlines_vllm.bench.validate import judge
from outlines_vllm.bench.workloads import ARITHMETIC_REGEX, PERSON_SCHEMA, Request, Workload, build
from outlines_vllm.errors import ConstraintRejectedError, TruncatedOutputError
from outlines_vllm.types import Choice, Regex, output_spec

PERSON = output_spec(PERSON_SCHEMA)
GOOD = '{"name":"Ana","age":31,"city":"Lyon","skills":["baking"]}'


def test_a_schema_valid_answer_is_valid():
    assert judge(PERSON, GOOD, "stop").valid


@pytest.mark.parametrize(
    ("text", "finish_reason", "truncated"),
    [
        ('{"name":"Ana","age":"31","city":"Lyon","skills":[]}', "stop", False),  # wrong type
        ('{"name":"Ana","age":31,"skills":[]}', "stop", False),  # missing required field
        ('{"name":"Ana","age":31,"city":"Ly', "stop", False),  # truncated JSON, no length stop
        ('{"name":"Ana","age":31,"city":"Ly', "length", True),  # cut by max_tokens
        (GOOD, "length", True),  # complete-looking text that still hit the limit
        ('{"name":"Ana","age":31,"city":"Lyon","skills":[],"extra":1}', "stop", False),  # closed object
        ("Sure! Here is the JSON: " + GOOD, "stop", False),  # prose around JSON
    ],
)
def test_invalid_json_answers_are_counted_invalid(text, finish_reason, truncated):
    verdict = judge(PERSON, text, finish_reason)
    assert not verdict.valid
    assert verdict.truncated is truncated
    assert verdict.reason


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (output_spec(Regex(r"\d{4}-\d{2}-\d{2}")), "1969-07-20 is the date"),  # regex: no full match
        (output_spec(Regex(r"\d{4}-\d{2}-\d{2}")), "July 1969"),
        (output_spec(Choice(["positive", "negative"])), "neutral"),  # not in the list
        (output_spec(Choice(["positive", "negative"])), "Positive"),
        (output_spec(Regex(ARITHMETIC_REGEX)), "12 + (3 * 4)"),  # outside the grammar's language
    ],
)
def test_regex_choice_and_grammar_mismatches_are_invalid(spec, text):
    assert not judge(spec, text, "stop").valid


def test_regex_and_choice_matches_are_valid():
    assert judge(output_spec(Regex(r"\d{4}-\d{2}-\d{2}")), "1969-07-20", "stop").valid
    assert judge(output_spec(Choice(["positive", "negative"])), "negative", "stop").valid
    assert judge(output_spec(Regex(ARITHMETIC_REGEX)), "12 + 3 * 40", "stop").valid


def _workload(n: int) -> Workload:
    request = Request([{"role": "user", "content": "p"}], PERSON, PERSON)
    return Workload("json_fixed", "json", request, [], [request] * n)


def test_summary_counts_add_up_and_validity_is_judged_by_schema():
    records = [
        Record(True, GOOD, "stop", 20, latency=1.0, ttft=0.1, tpot=0.02, itl=[0.02, 0.03]),
        Record(True, '{"name":"Ana"}', "stop", 6, latency=1.0, ttft=0.1),  # valid JSON, not the schema
        Record(True, '{"name":"A', "length", 64, latency=2.0, ttft=0.2),
        Record(False, error="APIConnectionError: refused"),
    ]
    first = Record(True, GOOD, "stop", 20, latency=3.0)
    run = summarise(_workload(4), Measured(first, records, 2.0), {"mode": "online", "path": "raw"})
    assert (run["sent"], run["succeeded"], run["failed"]) == (4, 3, 1)
    assert (run["valid"], run["invalid"], run["truncated"]) == (1, 2, 1)
    assert run["sent"] == run["succeeded"] + run["failed"]
    assert run["valid_objects_per_s"] == pytest.approx(0.5)
    assert run["output_tokens_per_s"] == pytest.approx(45.0)
    assert run["first_request"] == {"latency_s": 3.0, "ttft_s": None, "ok": True, "valid": True}
    assert run["errors"] == {"APIConnectionError: refused": 1}
    assert [a.get("valid") for a in run["answers"]] == [True, False, False, None]
    assert run["itl_s"]["p50"] == pytest.approx(0.025)


def test_percentiles_interpolate_and_tolerate_no_data():
    assert percentiles([1, 2, 3, 4, 5])["p50"] == 3
    assert percentiles(list(range(101)))["p99"] == pytest.approx(99)
    assert percentiles([None, None]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_poisson_arrivals_are_seeded_and_increasing():
    a, b = arrivals(50, 4.0, seed=1), arrivals(50, 4.0, seed=1)
    assert a == b and a == sorted(a) and a[0] == 0.0
    assert 5 < a[-1] < 25  # about 49 / 4 s
    assert arrivals(3, None, seed=1) == [0.0, 0.0, 0.0]


def test_package_records_take_finish_reason_and_tokens_from_the_generation_or_its_error():
    from outlines_vllm.models.base import Generation, Usage

    done = _package_record([Generation('{"a": 1}', {"a": 1}, "stop", usage=Usage(12, 7))])
    assert (done.ok, done.text, done.finish_reason, done.output_tokens) == (True, '{"a": 1}', "stop", 7)
    cut = TruncatedOutputError('{"a": ', 4)
    cut.usage = Usage(12, 4)
    assert (_package_record(cut).finish_reason, _package_record(cut).output_tokens) == ("length", 4)
    failed = _package_record(ConstraintRejectedError(400, "bad"))
    assert (failed.ok, failed.output_tokens) == (False, None)


def _run(path: str, workload: str, rps: float, valid: int, **extra) -> dict:
    return {
        "mode": "online",
        "path": path,
        "backend": "auto",
        "workload": workload,
        "main": True,
        "concurrency": 8,
        "rate": None,
        "requests_per_s": rps,
        "output_tokens_per_s": rps * 30,
        "valid_objects_per_s": rps * valid / 8,
        "validity": valid / 8,
        "tokens_per_valid_object": 30.0 if valid else None,
        "latency_s": {"p50": 1 / rps},
        **extra,
    }


def test_comparisons_report_overhead_and_constrained_ratios():
    runs = [
        _run("raw", "json_fixed", 2.0, 8),
        _run("package", "json_fixed", 1.6, 8),
        _run("raw", "none", 1.0, 0),
        _run("package", "none", 1.0, 0),
    ]
    result = comparisons(runs)
    overhead = {(c["mode"], c["workload"]): c["overhead_ratio"] for c in result["package_overhead"]}
    assert overhead[("online", "json_fixed")] == pytest.approx(1.25)
    assert overhead[("online", "all (geometric mean)")] == pytest.approx(1.25**0.5)
    constrained = [c for c in result["constrained_vs_unconstrained"] if c["path"] == "raw"]
    assert constrained[0]["requests_per_s"] == pytest.approx(2.0)
    assert constrained[0]["valid_objects_per_s"] is None  # the baseline made no valid object


def test_workloads_are_seeded_and_unique_schemas_are_unique():
    a = build("json_unique", requests=4, warmup=1, seed=3, salt="s")
    b = build("json_unique", requests=4, warmup=1, seed=3, salt="s")
    assert [r.prompt for r in a.measured] == [r.prompt for r in b.measured]
    schemas = {json.dumps(r.spec.constraint.value, sort_keys=True) for r in [a.first, *a.warmup, *a.measured]}
    assert len(schemas) == 6
    fixed = build("json_fixed", requests=4, warmup=1, seed=3, salt="s")
    assert len({id(r.spec) for r in [fixed.first, *fixed.warmup, *fixed.measured]}) == 1
    none = build("none", requests=4, warmup=1, seed=3, salt="s")
    assert none.measured[0].spec.constraint is None and none.measured[0].check.json_schema == PERSON_SCHEMA


def test_jsonschemabench_workload_counts_skipped_schemas():
    options = {"sets": ["Github_easy"], "schemas": 100}
    workload = build("jsonschemabench", requests=4, warmup=0, seed=0, salt="s", jsonschemabench=options)
    assert workload.notes["schemas_used"] == 100
    skipped = workload.notes["schemas_skipped"]
    assert set(skipped) == {"rejected", "too_long"} and skipped["too_long"] >= 1  # long ones crowd the prompt
    for request in workload.measured:  # every schema kept compiles and validates on our side
        assert request.spec.constraint.structured_outputs()
        assert request.check.json_schema is not None


def test_report_writes_json_markdown_and_plots(tmp_path):
    runs = [
        _run("raw", "json_fixed", 2.0, 8),
        _run("raw", "json_fixed", 3.0, 8, concurrency=16, main=False),
        _run("package", "json_fixed", 1.6, 8),
    ]
    for run in runs:
        run |= {
            "sent": 8,
            "succeeded": 8,
            "failed": 0,
            "valid": 8,
            "invalid": 0,
            "truncated": 0,
            "ttft_s": percentiles([0.1, 0.2]),
            "tpot_s": percentiles([0.03]),
            "itl_s": percentiles([0.03, 0.05]),
            "output_tokens": {"mean": 30.0},
            "first_request": {"latency_s": 1.0},
        }
    document = {
        "command": "outlines-vllm bench online --base-url http://x",
        "environment": {"vllm_version": "0.32.0", "device": "cpu", "cpu_count": 2, "model": "/m/SmolLM2",
                        "structured_output_backends": ["auto"]},
        "scenario": {"name": "t", "requests": 8, "warmup": 2, "max_tokens": 64, "temperature": 0.7, "seed": 0},
        "runs": runs,
        "comparisons": comparisons(runs),
    }  # fmt: skip
    files = report.write(document, tmp_path)
    assert json.loads(files["json"].read_text())["runs"][0]["workload"] == "json_fixed"
    text = files["markdown"].read_text()
    assert "Overhead of this package vs the raw path, online" in text and "| online | raw |" in text
    for name in report.PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_plan_has_main_runs_a_sweep_and_a_poisson_run():
    scenario = Scenario.load("default")
    offline, online = _plan(scenario, "offline"), _plan(scenario, "online")
    assert len(offline) == len(scenario.workloads) * 2 and all(r["main"] for r in offline)
    main = [r for r in online if r["main"]]
    assert len(main) == len(offline) and {r["concurrency"] for r in main} == {scenario.concurrency}
    assert {r["concurrency"] for r in online if not r["main"] and not r["rate"]} == {1, 16}
    assert sorted(r["path"] for r in online if r["rate"]) == ["package", "raw"]
    firsts = [r["path"] for r in main[::2]]
    assert firsts.count("raw") == firsts.count("package")  # each path goes first half the time


def test_scenario_files_load_and_unknown_fields_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "backends").mkdir()  # a results folder of that name does not hide the scenario
    for name in ("default", "full", "tiny", "backends"):
        assert Scenario.load(name).name == name
    bad = tmp_path / "bad.yaml"
    bad.write_text("requestz: 3\n")
    with pytest.raises(ValueError, match="requestz"):
        Scenario.load(bad)
    with pytest.raises(ValueError, match="unknown workloads"):
        Scenario(workloads=["json_fixed", "nope"])
