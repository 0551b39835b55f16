"""``outlines-vllm bench serving``: what the Ray Serve app costs over the engine it serves.

One app with one replica is deployed; the benchmark then sends the same streamed load to the
replica's own engine endpoint (``direct``, loopback on the replica's node) and through the app
(``app``: Serve's proxy and everything behind it), alternating which goes first, at each
concurrency, ``repeats`` times. Same engine, same cores, same prompts (each request starts with
its own salt, so no path gets a prefix-cache hit the other did not).

Reported per path and concurrency (median over repeats, min-max spread): output tok/s,
requests/s, streamed chunks/s, TTFT and TPOT p50/p90; and the app/direct ratio of each, taken
within a repeat (the two runs are seconds apart) and then summarised the same way. Beside the
rates, the CPU time each serving process spent per streamed chunk (:mod:`.cpu_meter`): the
layer's own cost, which the other jobs of a shared machine do not blur.

``--model tiny`` serves a dummy-weight model made on the fly (:func:`tiny_model`): an engine
that outruns the serving layer, as a GPU engine does, so its ratios are the layer's ceiling.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .cpu_meter import CpuMeter

PATHS = ("direct", "app")
METRICS = (
    "output_tokens_per_s",
    "requests_per_s",
    "chunks_per_s",
    "ttft_p50",
    "ttft_p90",
    "tpot_p50",
    "tpot_p90",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# A 2-layer Llama with the default model's vocabulary: head_dim 64 (vLLM's CPU attention
# kernels support it), about 6.5 M parameters, almost all of them the embedding.
TINY_CONFIG = {
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "tie_word_embeddings": True,
}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "cloud",
    "maple",
    "orbit",
    "signal",
    "copper",
    "lantern",
    "meadow",
    "harbor",
]


def tiny_model(folder: str | Path, source: str | Path | None = None) -> Path:
    """A dummy-weight model folder: ``source``'s ``config.json`` shrunk (:data:`TINY_CONFIG`) and
    its tokenizer files. No weights: serve it with ``load_format="dummy"`` (random weights)."""
    if source is None:
        from ..default_model import prepare

        source = prepare()
    source, out = Path(source), Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config.update(TINY_CONFIG)
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    return out


@dataclass
class Stream:
    """One streamed completion as the client saw it."""

    ok: bool
    start: float
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    tokens: int = 0
    error: str = ""

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def tpot(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2:
            return None
        return (self.last - self.first) / (self.tokens - 1)


@dataclass
class Load:
    """What each run sends: ``requests`` completions of ``max_tokens`` tokens (EOS ignored) to
    ``prompt_words``-word prompts, at most ``concurrency`` at once."""

    model: str
    concurrency: int
    requests: int
    max_tokens: int = 64
    prompt_words: int = 48
    salt: str = ""

    def bodies(self, seed: int) -> list[bytes]:
        rng = random.Random(seed)
        out = []
        for i in range(self.requests):
            words = " ".join(rng.choice(WORDS) for _ in range(self.prompt_words))
            body = {
                "model": self.model,
                "prompt": f"[{self.salt}-{seed}-{i}] {words}",
                "max_tokens": self.max_tokens,
                "min_tokens": self.max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            out.append(json.dumps(body).encode())
        return out


async def _one(session: Any, url: str, body: bytes, headers: dict[str, str]) -> Stream:
    record = Stream(ok=False, start=time.perf_counter())
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return record
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    record.tokens = data["usage"].get("completion_tokens") or 0
                if any(c.get("text") for c in data.get("choices") or []):
                    now = time.perf_counter()
                    record.first = record.first or now
                    record.last = now
                    record.chunks += 1
                if data.get("error"):
                    record.error = str(data["error"])[:200]
                    return record
        record.ok = record.chunks > 0
    except Exception as exc:  # a failed request is counted, never hidden
        record.error = f"{type(exc).__name__}: {exc}"[:200]
    return record


async def drive(
    base_url: str, bodies: list[bytes], concurrency: int, api_key: str | None = None
) -> dict[str, Any]:
    """Send ``bodies`` (streamed completions) with at most ``concurrency`` in flight; summarise."""
    import aiohttp

    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    queue = list(reversed(bodies))
    records: list[Stream] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while queue:
                records.append(await _one(session, url, queue.pop(), headers))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    return summarise(records, duration)


def _pct(values: list[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarise(records: list[Stream], duration: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    return {
        "sent": len(records),
        "succeeded": len(ok),
        "errors": sorted({r.error for r in records if not r.ok})[:3],
        "duration_s": duration,
        "chunks": sum(r.chunks for r in ok),
        "output_tokens_per_s": sum(r.tokens for r in ok) / duration,
        "requests_per_s": len(ok) / duration,
        "chunks_per_s": sum(r.chunks for r in ok) / duration,
        "ttft_p50": _pct(ttft, 0.5),
        "ttft_p90": _pct(ttft, 0.9),
        "tpot_p50": _pct(tpot, 0.5),
        "tpot_p90": _pct(tpot, 0.9),
    }


@dataclass
class Plan:
    """The whole measurement: concurrency levels, runs per level and path, requests per run."""

    concurrency: list[int] = field(default_factory=lambda: [1, 16])
    repeats: int = 3
    requests: dict[int, int] = field(default_factory=lambda: {1: 16, 16: 64})
    max_tokens: int = 64
    prompt_words: int = 48
    warmup: int = 8


def measure(
    urls: dict[str, str],
    model: str,
    plan: Plan,
    api_key: str | None = None,
    meter: CpuMeter | None = None,
) -> list[dict[str, Any]]:
    """Every run: for each concurrency and repeat, both paths back to back (order alternating);
    with ``meter``, the CPU seconds each process group spent in the run (``cpu_s``)."""
    runs = []
    salt = f"{random.getrandbits(32):08x}"
    total = len(plan.concurrency) * plan.repeats * len(PATHS)
    with tqdm(total=total, desc="serving benchmark runs", unit="run") as bar:
        for path in PATHS:  # warm both paths (connections, first-request costs), not counted
            warm = Load(
                model, min(4, plan.warmup), plan.warmup, plan.max_tokens, plan.prompt_words, salt + "w"
            )
            asyncio.run(drive(urls[path], warm.bodies(0), warm.concurrency, api_key))
        for c in plan.concurrency:
            load = Load(model, c, plan.requests.get(c, 4 * c), plan.max_tokens, plan.prompt_words, salt)
            for repeat in range(plan.repeats):
                order = PATHS if repeat % 2 == 0 else PATHS[::-1]
                for position, path in enumerate(order):
                    seed = 1000 * c + 10 * repeat + position
                    before = meter.snapshot() if meter else {}
                    summary = asyncio.run(drive(urls[path], load.bodies(seed), c, api_key))
                    if meter:
                        summary["cpu_s"] = meter.since(before)
                    runs.append(
                        {"path": path, "concurrency": c, "repeat": repeat, "order": position} | summary
                    )
                    bar.update()
    return runs


def _spread(values: list[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: each path's metrics (median, min, max over repeats) and the app/direct
    ratio of each metric within a repeat (for latencies: app minus direct too, in ms)."""
    rows = []
    for c in sorted({r["concurrency"] for r in runs}):
        by = {p: {r["repeat"]: r for r in runs if r["concurrency"] == c and r["path"] == p} for p in PATHS}
        repeats = sorted(set(by["direct"]) & set(by["app"]))
        row: dict[str, Any] = {"concurrency": c, "repeats": len(repeats)}
        for metric in METRICS:
            direct = [by["direct"][i][metric] for i in repeats]
            app = [by["app"][i][metric] for i in repeats]
            row[metric] = {
                "direct": _spread(direct),
                "app": _spread(app),
                "ratio": _spread([a / d for a, d in zip(app, direct, strict=True) if a and d]),
            }
            if metric.startswith(("ttft", "tpot")):
                row[metric]["delta_ms"] = _spread(
                    [
                        1000 * (a - d)
                        for a, d in zip(app, direct, strict=True)
                        if a is not None and d is not None
                    ]
                )
        row["cpu_us_per_chunk"] = _cpu_per_chunk([by[p][i] for p in PATHS for i in repeats])
        row["failed"] = sum(r["sent"] - r["succeeded"] for r in runs if r["concurrency"] == c)
        rows.append(row)
    return rows


def _cpu_per_chunk(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process group: CPU µs per streamed chunk on each path (median, min-max over repeats)
    and app minus direct within a repeat: what the app's layer costs that process per chunk."""
    runs = [r for r in runs if r.get("cpu_s") and r.get("chunks")]
    per: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        for group, seconds in r["cpu_s"].items():
            per.setdefault(group, {p: {} for p in PATHS})[r["path"]][r["repeat"]] = (
                1e6 * seconds / r["chunks"]
            )
    out = {}
    for group, paths in per.items():
        both = sorted(set(paths["direct"]) & set(paths["app"]))
        out[group] = {p: _spread(list(paths[p].values())) for p in PATHS} | {
            "delta": _spread([paths["app"][i] - paths["direct"][i] for i in both])
        }
    return out


GOALS = {
    "real": {
        "output_tokens_per_s": ("ratio", 0.97),
        "ttft_p50": ("delta_ms", 10.0),
        "tpot_p50": ("ratio", 1.03),
    },
    "tiny": {"requests_per_s": ("ratio", 0.95), "chunks_per_s": ("ratio", 0.95)},
}


def goals(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Each goal of the issue, per concurrency, checked on the median: met or not."""
    out = []
    for row in rows:
        for metric, (measure_, bound) in GOALS[kind].items():
            value = row[metric][measure_]["median"]
            higher_is_better = measure_ == "ratio" and not metric.startswith(("ttft", "tpot"))
            met = value is not None and (value >= bound if higher_is_better else value <= bound)
            out.append(
                {
                    "concurrency": row["concurrency"],
                    "metric": metric,
                    "measure": measure_,
                    "bound": bound,
                    "value": value,
                    "met": met,
                }
            )
    return out


# --- report ----------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _cell(stats: dict[str, float | None], digits: int = 2, scale: float = 1.0) -> str:
    return f"{_f(stats['median'], digits, scale)} ({_f(stats['min'], digits, scale)}-{_f(stats['max'], digits, scale)})"


LABELS = {
    "output_tokens_per_s": ("output tok/s", 1, 1.0),
    "requests_per_s": ("requests/s", 2, 1.0),
    "chunks_per_s": ("chunks/s", 1, 1.0),
    "ttft_p50": ("TTFT p50 ms", 1, 1000.0),
    "ttft_p90": ("TTFT p90 ms", 1, 1000.0),
    "tpot_p50": ("TPOT p50 ms", 2, 1000.0),
    "tpot_p90": ("TPOT p90 ms", 2, 1000.0),
}


def markdown(results: dict[str, Any]) -> str:
    env, plan = results["environment"], results["plan"]
    lines = [
        f"# Serving overhead: {results['label']}\n",
        f"vLLM {env['vllm_version']} on {env['device']}, {env['cpu_count']} CPUs; model `{results['model_name']}`"
        f" ({results['model_kind']}); design `{results['design']}`; one replica. Each run: streamed completions,"
        f" {plan['prompt_words']}-word prompts, {plan['max_tokens']} output tokens (EOS ignored); requests per run"
        f" {plan['requests']}; {plan['repeats']} repeats per concurrency, direct and app back to back, order"
        " alternating. Cells: median (min-max) over repeats; ratios are app/direct within a repeat.\n",
        f"Command: `{results['command']}`\n",
        "## Goals\n",
        "| concurrency | metric | goal | median | met |",
        "|---|---|---|---|---|",
    ]
    for g in results["goals"]:
        goal = f"{g['measure']} {'>=' if g['measure'] == 'ratio' and not g['metric'].startswith(('ttft', 'tpot')) else '<='} {g['bound']}"
        lines.append(
            f"| {g['concurrency']} | {g['metric']} | {goal} | {_f(g['value'], 3)} | {'yes' if g['met'] else 'no'} |"
        )
    lines += [
        "",
        "## Per concurrency\n",
        "| c | metric | direct | through the app | app/direct | app-direct ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["comparison"]:
        for metric, (label, digits, scale) in LABELS.items():
            cell = row[metric]
            delta = _cell(cell["delta_ms"], 1) if "delta_ms" in cell else ""
            lines.append(
                f"| {row['concurrency']} | {label} | {_cell(cell['direct'], digits, scale)} | {_cell(cell['app'], digits, scale)}"
                f" | {_cell(cell['ratio'], 3)} | {delta} |"
            )
        lines.append(f"| {row['concurrency']} | failed requests | | {row['failed']} | | |")
    if any(row.get("cpu_us_per_chunk") for row in results["comparison"]):
        lines += [
            "",
            "## CPU per streamed chunk\n",
            "CPU time (user + system) each process group spent in a run, divided by the chunks the"
            " run streamed, in µs: median (min-max) over repeats; app-direct within a repeat."
            " `replica`: the Ray worker holding the gate, Serve's ingress, vLLM's API server and"
            " the engine client; `engine`: vLLM's engine core; `proxy`: HAProxy (or Serve's proxy);"
            " `client`: the load generator; `other`: the rest of the machine (Ray's own processes,"
            " and any other job).\n",
            "| c | process | direct | through the app | app-direct |",
            "|---|---|---|---|---|",
        ]
        for row in results["comparison"]:
            for group, cell in row.get("cpu_us_per_chunk", {}).items():
                lines.append(
                    f"| {row['concurrency']} | {group} | {_cell(cell['direct'], 0)} | {_cell(cell['app'], 0)}"
                    f" | {_cell(cell['delta'], 0)} |"
                )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("output_tokens_per_s", "requests_per_s", "chunks_per_s", "ttft_p50", "tpot_p50")
    rows = results["comparison"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(rows))
    for j, row in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(metrics))]
        med = [row[m]["ratio"]["median"] or 0 for m in metrics]
        lo = [m_ - (row[m]["ratio"]["min"] or m_) for m_, m in zip(med, metrics, strict=True)]
        hi = [(row[m]["ratio"]["max"] or m_) - m_ for m_, m in zip(med, metrics, strict=True)]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=f"c={row['concurrency']}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(metrics)), [LABELS[m][0] for m in metrics])
    ax.set_ylabel("through the app / direct")
    ax.set_title(
        f"Serving overhead ({results['model_kind']} model, design {results['design']}): ratio, min-max over repeats"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def publish(results: dict[str, Any], out: Path) -> None:
    from .report import save

    print(markdown(results))
    save(out, results, markdown(results), lambda path: plot(results, path), "serving_overhead.png")


# --- the run -----------------------------------------------------------------------------------------


def run(
    model: str,
    plan: Plan,
    out: Path,
    *,
    port: int = 8000,
    design: str = "",
    command: str = "",
    replica_cpus: float = 1,
    proxy: str = "haproxy",
) -> dict[str, Any]:
    """Deploy the app (one replica of ``model``: ``default``, ``tiny`` or a folder), measure, report."""
    import tempfile
    from urllib.parse import urlsplit

    from ray import serve

    from ..server.app import APP_NAME, deployed
    from ..server.config import AppConfig
    from .cpu_meter import CpuMeter
    from .environment import environment

    kind = "tiny" if model == "tiny" else "real"
    engine: dict[str, Any] = {}
    if kind == "tiny":
        model = str(tiny_model(Path(tempfile.mkdtemp(prefix="outlines-vllm-tiny-"))))
        engine["load_format"] = "dummy"
    config = AppConfig(
        models=[
            {
                "model": model,
                "name": "bench",
                "replicas": 1,
                "replica_cpus": replica_cpus,
                "engine": engine,
                "max_ongoing_requests": 256,
            }
        ]
    )
    with deployed(config, host="127.0.0.1", port=port, proxy=proxy):
        handle = serve.get_deployment_handle(config.models[0].deployment_name, APP_NAME)
        urls = {"direct": handle.engine_url.remote().result(), "app": f"http://127.0.0.1:{port}"}
        print(f"direct: {urls['direct']}  app: {urls['app']}", flush=True)
        meter = CpuMeter.for_serving(urlsplit(urls["direct"]).port, port)
        runs = measure(urls, "bench", plan, config.resolved_api_key(), meter)
        env = environment(model=model, base_url=urls["direct"])
    rows = compare(runs)
    results = {
        "label": f"{kind} model",
        "model_kind": kind,
        "model_name": Path(model).name if kind == "real" else "tiny (dummy weights)",
        "design": design + (f", proxy: {proxy}" if proxy else ""),
        "command": command,
        "environment": env,
        "plan": plan.__dict__ | {"requests": {str(k): v for k, v in plan.requests.items()}},
        "engine_options": engine,
        "comparison": rows,
        "goals": goals(rows, kind),
        "runs": runs,
    }
    publish(results, out)
    return results
