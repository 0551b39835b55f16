"""Summaries of one run and ratios between runs.

Every answer is judged by ``validate.judge`` here, so all paths are counted the same way.
Counts always add up: ``sent == succeeded + failed`` and ``valid + invalid == succeeded``;
truncated answers are a subset of the invalid ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .load import Measured
from .validate import judge
from .workloads import Workload

LATENCIES = ("ttft_s", "tpot_s", "itl_s", "latency_s")
RATES = ("requests_per_s", "output_tokens_per_s", "valid_objects_per_s")


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99 (linear interpolation) and the mean; all None when nothing was measured."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return {"p50": None, "p90": None, "p99": None, "mean": None}

    def at(q: float) -> float:
        pos = (len(data) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": sum(data) / len(data)}


def summarise(workload: Workload, measured: Measured, labels: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one run, with ``labels`` (mode, path, backend, concurrency, ...) in front."""
    records = measured.records
    for record, request in zip(records, workload.measured, strict=True):
        if record.ok:
            record.verdict = judge(request.check, record.text, record.finish_reason)
    ok = [r for r in records if r.ok]
    valid = [r for r in ok if r.verdict.valid]
    truncated = [r for r in ok if r.verdict.truncated]
    tokens = [r.output_tokens for r in ok if r.output_tokens is not None]
    duration = measured.duration or float("nan")
    first = measured.first
    first_verdict = judge(workload.first.check, first.text, first.finish_reason) if first.ok else None
    summary: dict[str, Any] = {
        **labels,
        "workload": workload.name,
        "kind": workload.kind,
        "sent": len(records),
        "succeeded": len(ok),
        "failed": len(records) - len(ok),
        "valid": len(valid),
        "invalid": len(ok) - len(valid),
        "truncated": len(truncated),
        "validity": len(valid) / len(ok) if ok else 0.0,
        "truncation_rate": len(truncated) / len(ok) if ok else 0.0,
        "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0,
        "duration_s": measured.duration,
        "requests_per_s": len(ok) / duration,
        "output_tokens_per_s": sum(tokens) / duration,
        "valid_objects_per_s": len(valid) / duration,
        "ttft_s": percentiles([r.ttft for r in ok]),
        "tpot_s": percentiles([r.tpot for r in ok]),
        "itl_s": percentiles([gap for r in ok for gap in r.itl]),
        "latency_s": percentiles([r.latency for r in ok]),
        "output_tokens": {
            "total": sum(tokens),
            "mean": sum(tokens) / len(tokens) if tokens else None,
            "p50": percentiles(tokens)["p50"],
            "max": max(tokens, default=None),
        },
        "tokens_per_valid_object": sum(tokens) / len(valid) if valid else None,
        "first_request": {
            "latency_s": first.latency,
            "ttft_s": first.ttft,  # grammar compilation happens before the first token
            "ok": first.ok,
            "valid": bool(first_verdict and first_verdict.valid),
        },
        "errors": dict(Counter(r.error for r in records if not r.ok).most_common(5)),
        "invalid_reasons": dict(Counter(r.verdict.reason for r in ok if not r.verdict.valid).most_common(5)),
        "notes": workload.notes,
        "answers": [
            {
                "text": r.text,
                "finish_reason": r.finish_reason,
                "output_tokens": r.output_tokens,
                "valid": r.verdict.valid,
                "truncated": r.verdict.truncated,
                "reason": r.verdict.reason,
            }
            if r.ok
            else {"error": r.error}
            for r in records
        ],
    }
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _partner(main: list[dict[str, Any]], run: dict[str, Any], **changes: Any) -> dict[str, Any] | None:
    """The main run that differs from ``run`` only in ``changes`` (mode, path, backend, workload)."""
    want = {k: run[k] for k in ("mode", "path", "backend", "workload")} | changes
    return next((r for r in main if all(r[k] == v for k, v in want.items())), None)


def _rates(run: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {rate: _ratio(run[rate], base[rate]) for rate in RATES} | {
        "validity": (run["validity"], base["validity"]),
        "tokens_per_valid_object": (run["tokens_per_valid_object"], base["tokens_per_valid_object"]),
    }


def comparisons(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ratios of each repetition (``_comparisons``); with ``repeat`` > 1, each ratio is the
    median over the repetitions, with its ``spread`` (min, max) and the number of ``repeats``."""
    repeats = sorted({run.get("repeat", 0) for run in runs})
    if len(repeats) <= 1:
        return _comparisons(runs)
    each = [_comparisons([r for r in runs if r.get("repeat", 0) == k]) for k in repeats]
    return {name: _merge([found[name] for found in each]) for name in each[0]}


def _merge(repetitions: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per comparison: text labels kept, numbers -> median + min-max, pairs elementwise."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rows in repetitions:
        for row in rows:
            key = tuple((k, v) for k, v in row.items() if isinstance(v, str))
            groups.setdefault(key, []).append(row)
    merged = []
    for key, rows in groups.items():
        out: dict[str, Any] = dict(key)
        spread: dict[str, list[float]] = {}
        for name, first in rows[0].items():
            if isinstance(first, str):
                continue
            values = [row.get(name) for row in rows]
            if isinstance(first, tuple | list):
                out[name] = tuple(_median([v[i] for v in values if v is not None]) for i in range(len(first)))
                continue
            numbers = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
            out[name] = _median(numbers)
            if numbers:
                spread[name] = [min(numbers), max(numbers)]
        merged.append(out | {"spread": spread, "repeats": len(rows)})
    return merged


def _median(values: list[float | None]) -> float | None:
    numbers = sorted(v for v in values if v is not None)
    if not numbers:
        return None
    mid = len(numbers) // 2
    return numbers[mid] if len(numbers) % 2 else (numbers[mid - 1] + numbers[mid]) / 2


def _comparisons(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ratios the report leads with, between main runs (each mode's main setting).

    - constrained vs unconstrained: ``json_fixed`` over the ``none`` baseline on the same prompts;
    - compact vs free whitespace: ``json_fixed`` over ``json_free_whitespace``;
    - online vs offline: the same workload and path, online over offline;
    - package overhead: raw requests/s over package requests/s (1.0 = none, 1.1 = 10 % slower);
    - backends: each backend's rates over the first backend's.
    """
    main = [r for r in runs if r.get("main")]
    backends = list(dict.fromkeys(r["backend"] for r in main))
    pairs = {
        "constrained_vs_unconstrained": lambda r: r["workload"] == "json_fixed" and {"workload": "none"},
        "compact_vs_free_whitespace": lambda r: (
            r["workload"] == "json_fixed" and {"workload": "json_free_whitespace"}
        ),
        "online_vs_offline": lambda r: r["mode"] == "online" and {"mode": "offline"},
        "package_overhead": lambda r: r["path"] == "raw" and {"path": "package"},
        "backends": lambda r: r["backend"] != backends[0] and {"backend": backends[0]},
    }
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in pairs}
    for run in main:
        for name, changes_for in pairs.items():
            changes = changes_for(run)
            if not changes or not (base := _partner(main, run, **changes)):
                continue
            labels = {k: run[k] for k in ("mode", "path", "backend", "workload")}
            if name == "package_overhead":
                out[name].append(
                    labels
                    | {
                        "overhead_ratio": _ratio(run["requests_per_s"], base["requests_per_s"]),
                        "latency_p50_ratio": _ratio(base["latency_s"]["p50"], run["latency_s"]["p50"]),
                    }
                )
            else:
                out[name].append(labels | {"versus": next(iter(changes.values()))} | _rates(run, base))
    for mode in ("online", "offline"):
        ratios = [
            c["overhead_ratio"] for c in out["package_overhead"] if c["mode"] == mode and c["overhead_ratio"]
        ]
        if ratios:
            geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            out["package_overhead"].append(
                {"mode": mode, "workload": "all (geometric mean)", "overhead_ratio": geo}
            )
    return out
