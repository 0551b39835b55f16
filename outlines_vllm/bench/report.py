"""Reports: the results JSON, a Markdown table with the comparison ratios, and PNG plots
(throughput vs concurrency, latency percentiles, validity), drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOTS = ("throughput_vs_concurrency.png", "latency_percentiles.png", "validity.png")


def save(
    out_dir: str | Path, document: dict[str, Any], text: str, plot: Callable[[Path], None], png: str
) -> list[Path]:
    """What every benchmark leaves behind: ``results.json``, ``results.md`` (``text``) and the
    plot ``png`` drawn by ``plot`` into ``out_dir``; prints where they are."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "results.md", out / png]
    files[0].write_text(json.dumps(document, indent=2, default=str) + "\n")
    files[1].write_text(text)
    plot(files[2])
    print("wrote " + ", ".join(str(path) for path in files))
    return files


def write(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the plots into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "results.md"}
    files["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    files["markdown"].write_text(markdown(results))
    files.update(plots(results, out))
    return files


def publish(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write everything (``write``) and print the short table, the ratios and the file paths."""
    files = write(results, out_dir)
    print("\n" + summary(results) + "\n" + ratios(results["comparisons"]))
    print("\n".join(f"wrote {path}" for path in files.values()))
    return files


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ms(stats: dict[str, float | None], key: str) -> str:
    value = stats.get(key)
    return "-" if value is None else f"{value * 1000:.0f}"


def _times(ratio: float | None, base_valid: float | None) -> str:
    if ratio is None and base_valid == 0:
        return "inf (the baseline made no valid object)"
    return f"{_num(ratio)}x"


def _first(first: dict[str, Any]) -> str:
    ttft = first.get("ttft_s")
    return _num(first["latency_s"]) + (f" ({ttft:.2f})" if ttft is not None else "")


def _label(run: dict[str, Any]) -> str:
    if run.get("rate"):
        label = f"Poisson {run['rate']:g}/s"
    else:
        label = str(run["concurrency"]) if run.get("concurrency") else "batch"
    return label + (f" #{run['repeat'] + 1}" if run.get("repeats", 1) > 1 else "")


def _spread(row: dict[str, Any], key: str, digits: int = 2) -> str:
    """A ratio, with its min-max over repetitions when the run was repeated."""
    low_high = row.get("spread", {}).get(key)
    text = _num(row.get(key), digits)
    if low_high and row.get("repeats", 1) > 1:
        text += f" ({_num(low_high[0], digits)}-{_num(low_high[1], digits)}, {row['repeats']} runs)"
    return text


def _median_range(values: list[float | None], digits: int = 2) -> str:
    """The median of repeated runs' values, with min-max when there are several."""
    numbers = sorted(v for v in values if v is not None)
    if not numbers:
        return "-"
    mid = len(numbers) // 2
    median = numbers[mid] if len(numbers) % 2 else (numbers[mid - 1] + numbers[mid]) / 2
    if len(numbers) == 1:
        return _num(median, digits)
    return f"{_num(median, digits)} ({_num(numbers[0], digits)}-{_num(numbers[-1], digits)})"


def table(runs: list[dict[str, Any]]) -> str:
    """One row per run: rates, validity, lengths and latency percentiles."""
    head = (
        "| mode | path | backend | workload | load | req/s | out tok/s | valid obj/s | valid | trunc | err "
        "| tok/obj | TTFT p50/p99 ms | TPOT p50 ms | ITL p50/p99 ms | 1st req s (TTFT) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        lines.append(
            f"| {run['mode']} | {run['path']} | {run['backend']} | {run['workload']} | {_label(run)} "
            f"| {_num(run['requests_per_s'])} | {_num(run['output_tokens_per_s'], 1)} "
            f"| {_num(run['valid_objects_per_s'])} | {run['valid']}/{run['succeeded']} "
            f"| {run['truncated']} | {run['failed']} | {_num(run['output_tokens']['mean'], 1)} "
            f"| {_ms(run['ttft_s'], 'p50')}/{_ms(run['ttft_s'], 'p99')} | {_ms(run['tpot_s'], 'p50')} "
            f"| {_ms(run['itl_s'], 'p50')}/{_ms(run['itl_s'], 'p99')} | {_first(run['first_request'])} |"
        )
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> str:
    """The short table: one row per mode, backend and workload at the main load, raw / package
    side by side."""
    rows: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in results["runs"]:
        if run.get("main"):
            rows.setdefault((run["mode"], run["backend"], run["workload"]), {}).setdefault(
                run["path"], []
            ).append(run)
    cells = {  # repeated runs: the median (min-max) of rates, the sums of counts
        "valid obj/s": lambda rs: _median_range([r["valid_objects_per_s"] for r in rs]),
        "req/s": lambda rs: _median_range([r["requests_per_s"] for r in rs]),
        "valid": lambda rs: f"{sum(r['valid'] for r in rs)}/{sum(r['sent'] for r in rs)}",
        "err": lambda rs: str(sum(r["failed"] for r in rs)),
    }
    head = "| mode | backend | workload | " + " | ".join(f"{name} raw / package" for name in cells)
    lines = [head + " | tok/obj (raw) | TTFT p50 ms (raw) |", "|---" * (len(cells) + 5) + "|"]
    for (mode, backend, workload), by_path in rows.items():
        values = [
            " / ".join(cell(by_path[p]) if p in by_path else "-" for p in ("raw", "package"))
            for cell in cells.values()
        ]
        first = (by_path.get("raw") or next(iter(by_path.values())))[0]
        lines.append(
            f"| {mode} | {backend} | {workload} | {' | '.join(values)} "
            f"| {_num(first['output_tokens']['mean'], 1)} | {_ms(first['ttft_s'], 'p50')} |"
        )
    return "\n".join(lines) + "\n"


def ratios(comparisons: dict[str, list[dict[str, Any]]]) -> str:
    """The comparison ratios as short bullet lists."""
    out = []
    for row in comparisons.get("package_overhead", []):
        if row["workload"].startswith("all"):
            out.append(
                f"- **Overhead of this package vs the raw path, {row['mode']}**: {_spread(row, 'overhead_ratio', 3)}x "
                "(raw req/s over package req/s, geometric mean over workloads; 1.0 = none)"
            )
    for row in comparisons.get("constrained_vs_unconstrained", []):
        out.append(
            f"- Constrained (json_fixed) vs unconstrained, {row['mode']} {row['path']}: valid obj/s "
            f"{_times(row['valid_objects_per_s'], row['validity'][1])}"
            + (f" (range {_spread(row, 'valid_objects_per_s')})" if row.get("repeats", 1) > 1 else "")
            + f", out tok/s {_spread(row, 'output_tokens_per_s')}x, "
            f"validity {_num(row['validity'][0])} vs {_num(row['validity'][1])}"
        )
    for row in comparisons.get("compact_vs_free_whitespace", []):
        tokens = row["tokens_per_valid_object"]
        out.append(
            f"- Compact vs free-whitespace JSON, {row['mode']} {row['path']}: valid obj/s "
            f"{_spread(row, 'valid_objects_per_s')}x, tokens per valid object {_num(tokens[0], 1)} vs "
            f"{_num(tokens[1], 1)}, validity {_num(row['validity'][0])} vs {_num(row['validity'][1])}"
        )
    for path in ("raw", "package"):
        if online := [r for r in comparisons.get("online_vs_offline", []) if r["path"] == path]:
            parts = ", ".join(f"{r['workload']} {_spread(r, 'requests_per_s')}x" for r in online)
            out.append(f"- Online vs offline ({path} path, requests/s at the main load): {parts}")
    for row in comparisons.get("backends", []):
        out.append(
            f"- Backend {row['backend']} vs {row['versus']}, {row['mode']} {row['path']} {row['workload']}: "
            f"valid obj/s {_spread(row, 'valid_objects_per_s')}x, validity {_num(row['validity'][0])} vs "
            f"{_num(row['validity'][1])}"
        )
    return "\n".join(out) + "\n"


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    scenario = results["scenario"]
    head = (
        f"# Benchmark: {scenario['name']}\n\n"
        f"vLLM {env['vllm_version']} on {env['device']}, {env['cpu_count']} CPUs; model `{Path(env['model']).name}`; "
        f"backends {', '.join(env['structured_output_backends'])}; {scenario['requests']} measured requests per run "
        f"after {scenario['warmup']} warm-up, max_tokens {scenario['max_tokens']}, temperature "
        f"{scenario['temperature']}, seed {scenario['seed']}.\n"
    )
    if scenario.get("repeat", 1) > 1:
        head += (
            f"\nEvery run was repeated {scenario['repeat']} times (plan order alternated): rates and ratios "
            "are medians, with min-max in brackets.\n"
        )
    if results.get("engine_options"):
        options = ", ".join(f"{k}={v}" for k, v in results["engine_options"].items())
        head += f"\nEngines and servers started by the benchmark: {options}.\n"
    if results.get("command"):
        head += f"\nCommand: `{results['command']}`\n"
    legend = (
        "\nValid = passes the request's schema (jsonschema), regex (full match) or choice list and did not "
        "stop at max_tokens; `none` is the unconstrained baseline on the json prompts, judged by the same "
        "schema. Load: online concurrency limit, Poisson rate, or one offline batch. tok/obj = mean output "
        "tokens per answer (engine counts on the raw paths; the package paths return text, so theirs are "
        "re-tokenized, which undercounts the non-canonical token splits constrained decoding can produce). "
        "1st req = the run's first request, sent alone: its latency and, in brackets, its TTFT, which "
        "includes compiling a grammar the engine has not seen.\n"
    )
    return (
        head
        + "\n## Ratios\n\n"
        + ratios(results["comparisons"])
        + "\n## Summary (main load)\n\n"
        + summary(results)
        + "\n## Runs\n\n"
        + table(results["runs"])
        + legend
    )


# --- plots ---------------------------------------------------------------------------------------


def plots(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    files = {}
    for name, draw in zip(PLOTS, (_throughput, _latency, _validity), strict=True):
        fig = draw(plt, runs)
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files[name.removesuffix(".png")] = path
    return files


def _throughput(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    closed = [r for r in runs if r["mode"] == "online" and r.get("concurrency") and not r.get("rate")]
    series: dict[tuple, list[dict[str, Any]]] = {}
    for run in closed:
        series.setdefault((run["workload"], run["path"], run["backend"]), []).append(run)
    series = {k: v for k, v in series.items() if len(v) > 1} or series
    for (workload, path, backend), points in sorted(series.items()):
        points.sort(key=lambda r: r["concurrency"])
        label = f"{workload} ({path}{'' if backend == 'auto' else ', ' + backend})"
        style = "-" if path == "raw" else "--"
        for ax, key in zip(axes, ("valid_objects_per_s", "output_tokens_per_s"), strict=True):
            ax.plot(
                [p["concurrency"] for p in points], [p[key] for p in points], style, marker="o", label=label
            )
    for ax, title in zip(axes, ("valid objects / s", "output tokens / s"), strict=True):
        ax.set_xscale("log", base=2)
        levels = sorted({r["concurrency"] for r in closed})
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("concurrent requests")
        ax.set_title(f"Online: {title} vs concurrency")
        ax.grid(alpha=0.3)
    if series:
        axes[0].legend(fontsize=8)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no online runs in this scenario", ha="center", transform=ax.transAxes)
    return fig


def _latency(plt: Any, runs: list[dict[str, Any]]) -> Any:
    main = [r for r in runs if r.get("main") and r["mode"] == "online" and r["path"] == "raw"]
    metrics = (
        ("ttft_s", "time to first token"),
        ("tpot_s", "time per output token"),
        ("itl_s", "inter-token latency"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = [f"{r['workload']}{'' if r['backend'] == 'auto' else ' / ' + r['backend']}" for r in main]
    width = 0.27
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for j, q in enumerate(("p50", "p90", "p99")):
            values = [(r[key][q] or 0) * 1000 for r in main]
            ax.bar([i + (j - 1) * width for i in range(len(main))], values, width, label=q)
        ax.set_xticks(range(len(main)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(f"Online (raw): {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Latency percentiles at concurrency {main[0]['concurrency'] if main else '-'}", y=1.02)
    return fig


def _validity(plt: Any, runs: list[dict[str, Any]]) -> Any:
    main = [r for r in runs if r.get("main")]
    labels = [
        f"{r['mode']} {r['path']} {r['workload']}{'' if r['backend'] == 'auto' else ' / ' + r['backend']}"
        for r in main
    ]
    parts = (
        ("valid", "#2e7d32", lambda r: r["valid"]),
        ("invalid", "#f9a825", lambda r: r["invalid"] - r["truncated"]),
        ("truncated", "#ef6c00", lambda r: r["truncated"]),
        ("failed", "#c62828", lambda r: r["failed"]),
    )
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(main) + 1.4))
    left = [0.0] * len(main)
    for name, color, count in parts:
        widths = [count(r) / r["sent"] if r["sent"] else 0 for r in main]
        ax.barh(range(len(main)), widths, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(main)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of requests sent")
    ax.set_title("Validity by run (judged by schema / regex / choice)", pad=22)
    ax.legend(ncols=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig
