"""``outlines-vllm bench coverage``: which JSONSchemaBench schemas each vLLM grammar backend
accepts, what compiling them costs, and what a token mask costs, without an LLM.

For every selected schema and backend (xgrammar, guidance, outlines) three variants are
compiled in :mod:`.coverage_worker` processes under a time limit: ``json`` (what vLLM compiles
from a plain ``structured_outputs.json``, default server config), ``package`` (exactly the
``structured_outputs`` fields this package sends to an engine started as this project starts
them: whitespace off engine-wide, see ``engine_info.py``) and ``package-vanilla`` (what it sends
a server that does not say its settings, vLLM's own). A schema ``output_spec`` refuses is refused
by the client. Identical requests are compiled once. Results: one record per schema, backend and
variant, and per-set aggregates (``aggregate``), written by :mod:`.coverage_report`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..datasets import JSONSCHEMABENCH_SETS, jsonschemabench
from ..engine_info import COMPACT_BACKENDS
from .coverage_worker import BACKENDS, MODEL_ENV
from .stats import percentiles

VARIANTS = ("json", "package", "package-vanilla")
BATCH = 50  # schemas whose client fields are computed before their compiles start
# vLLM gives up compiling a regex (the outlines backend's whole compile) after this many seconds.
VLLM_REGEX_TIMEOUT_S = float(os.environ.get("VLLM_REGEX_COMPILATION_TIMEOUT_S", "5"))


@dataclass
class Options:
    """What one coverage run compiles and how."""

    sets: list[str] = field(default_factory=lambda: list(JSONSCHEMABENCH_SETS))
    per_set: int | None = 20  # None: every schema
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    timeout: float = 30.0  # CPU seconds per compile
    outlines_timeout: float = VLLM_REGEX_TIMEOUT_S  # outlines: at most vLLM's own regex limit
    workers: int = 2
    mask_per_set: int = 5  # schemas per set whose token masks are timed
    mask_steps: int = 32
    seed: int = 0
    max_minutes: float | None = None  # stop starting new schemas after this long

    def __post_init__(self) -> None:
        for name, given, known in (
            ("set", self.sets, JSONSCHEMABENCH_SETS),
            ("backend", self.backends, BACKENDS),
            ("variant", self.variants, VARIANTS),
        ):
            if unknown := [g for g in given if g not in known]:
                raise ValueError(f"unknown {name}(s) {unknown}; choose from {list(known)}")
        if min(self.timeout, self.outlines_timeout) <= 0 or self.workers < 1:
            raise ValueError("time limits must be positive and --workers at least 1")

    def limit(self, backend: str) -> float:
        """The time limit of one compile: outlines stops where vLLM itself gives up."""
        if backend == "outlines":
            return min(self.timeout, self.outlines_timeout, VLLM_REGEX_TIMEOUT_S)
        return self.timeout


def select(options: Options) -> list[dict[str, Any]]:
    """The schemas to compile, ``{"set", "id", "schema", "mask"}``, shuffled (seeded) so a run
    stopped early by ``max_minutes`` is still a uniform sample of the selection."""
    rng = random.Random(options.seed)
    chosen = []
    for name in options.sets:
        rows = jsonschemabench(name)
        if options.per_set is not None and options.per_set < len(rows):
            rows = rng.sample(rows, options.per_set)
        chosen += [{"set": name, "id": row["id"], "schema": row["schema"]} for row in rows]
    rng.shuffle(chosen)
    masked: dict[str, int] = {}
    for number, item in enumerate(chosen):  # masks: the first schemas of each set in run order
        masked[item["set"]] = masked.get(item["set"], 0) + 1
        item.update(number=number, mask=masked[item["set"]] <= options.mask_per_set)
    return chosen


def _key(backend: str, fields: dict[str, Any]) -> str:
    """Requests a backend compiles the same way get one key (outlines ignores whitespace options)."""
    relevant = {
        k: v
        for k, v in fields.items()
        if v is not None and not (backend == "outlines" and k.startswith("disable_"))
    }
    return backend + json.dumps(relevant, sort_keys=True)


def run(
    options: Options, model: str, *, progress: bool = True, schemas: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Compile the selection (or ``schemas``: ``{"set", "id", "schema"}`` rows); return the
    records and the run's facts (see ``aggregate``)."""
    from tqdm.auto import tqdm

    from .workerpool import WorkerPool

    if schemas is not None:
        schemas = [row | {"number": i, "mask": True} for i, row in enumerate(schemas)]
    else:
        schemas = select(options)
    os.environ[MODEL_ENV] = model  # the fork server warms every backend on this tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    deadline = started + options.max_minutes * 60 if options.max_minutes else None
    records: list[dict[str, Any]] = []
    with WorkerPool(options.workers, preload=["outlines_vllm.bench.coverage_worker"], quiet=True) as pool:
        bar = tqdm(total=len(schemas), desc="coverage", unit="schema", disable=not progress)
        for start in range(0, len(schemas), BATCH):  # batches: a stopped run wastes little work
            if deadline is not None and time.monotonic() > deadline:
                break
            batch = schemas[start : start + BATCH]
            sent = _client_phase(pool, batch, options)
            records += _compile_phase(pool, batch, sent, options, model, deadline, bar)
        bar.close()
        restarts = pool.restarts
    done = _complete(records, options)
    return {
        "options": asdict(options),
        "model": model,
        "seconds": time.monotonic() - started,
        "worker_restarts": restarts,
        "selected": len(schemas),
        "finished": len(done),
        "records": [
            {k: v for k, v in r.items() if k != "_schema"} for r in records if (r["set"], r["id"]) in done
        ],
    }


def _client_phase(pool: Any, schemas: list[dict[str, Any]], options: Options) -> list[dict[str, Any]]:
    """What the package sends for each schema (``output_spec``), computed in the workers too:
    the client side compiles with xgrammar, which may crash or hang like any compiler."""
    from .coverage_worker import client_fields

    if not any(v.startswith("package") for v in options.variants):
        return [{} for _ in schemas]
    sent: list[dict[str, Any]] = [{} for _ in schemas]
    for outcome in pool.run(client_fields, [s["schema"] for s in schemas], options.timeout):
        if outcome.status == "ok":
            sent[outcome.index] = outcome.value
        else:
            sent[outcome.index] = {
                "error": f"{outcome.status}: {outcome.error or ''}",
                "status": outcome.status,
            }
    return sent


def _compile_phase(
    pool: Any,
    schemas: list[dict[str, Any]],
    sent: list[dict[str, Any]],
    options: Options,
    model: str,
    deadline: float | None,
    bar: Any,
) -> Iterator[dict[str, Any]]:
    from .coverage_worker import compile_task

    jobs: list[dict[str, Any]] = []  # one per distinct (backend, request) of a schema
    waiting: dict[int, list[dict[str, Any]]] = {}  # job -> records it answers
    left: dict[int, int] = {}  # schema -> records still open

    def tasks() -> Iterable[dict[str, Any]]:
        for number, item in enumerate(schemas):
            if deadline is not None and time.monotonic() > deadline:
                return
            records: list[dict[str, Any]] = []
            seen: dict[str, int] = {}
            new: list[int] = []
            for backend in options.backends:
                for variant in options.variants:
                    record = {"set": item["set"], "id": item["id"], "backend": backend, "variant": variant}
                    records.append(record)
                    fields = _request(variant, backend, item["schema"], sent[number], record)
                    if fields is None:
                        status = sent[number].get("status", "refused")
                        record.update(status=status, reason="client", error=sent[number].get("error"))
                        continue
                    key = _key(backend, fields)
                    if key in seen:  # the same request: compiled once, answers both variants
                        waiting[seen[key]].append(record)
                        continue
                    seen[key] = len(jobs)
                    waiting[len(jobs)] = [record]
                    new.append(len(jobs))
                    job = {
                        "backend": backend,
                        "fields": fields,
                        "model": model,
                        "seed": options.seed + item["number"],
                    }
                    if item["mask"]:
                        job["mask_steps"] = options.mask_steps
                    jobs.append(job)
            for record in records:
                record["_schema"] = number
                if "status" in record:
                    close(record)
            left[number] = len(records) - sum("status" in r for r in records)
            if not left[number]:
                bar.update()
            yield from (jobs[i] for i in new)  # the pool numbers tasks as sent: job index == task index

    finished: list[dict[str, Any]] = []

    def close(record: dict[str, Any]) -> None:
        finished.append(record)

    limit = lambda job: options.limit(job["backend"])  # noqa: E731
    for outcome in pool.run(compile_task, tasks(), limit):
        for record in waiting.pop(outcome.index):
            record.update(_result(outcome, limit(jobs[outcome.index])))
            close(record)
            left[record["_schema"]] -= 1
            if not left[record["_schema"]]:
                bar.update()
        while finished:
            yield finished.pop(0)
    while finished:
        yield finished.pop(0)


def _request(
    variant: str, backend: str, schema: dict[str, Any], sent: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any] | None:
    """The ``structured_outputs`` fields of ``variant`` for ``backend`` (None: refused by the
    client). Package records note what was sent, the client's time, and which variant's request
    is the one the package falls back to when the engine refuses this one."""
    if variant == "json":
        return {"json": schema}
    record["client_ms"] = sent.get("ms")
    if "forms" not in sent:
        record["sent"] = None
        return None
    ours = variant == "package" and backend in COMPACT_BACKENDS
    form = sent["forms"]["compact" if ours else "vanilla"]
    record["sent"] = sorted(form["fields"])
    if form["fallback"] is not None:
        others = {"json": {"json": schema}, "package-vanilla": sent["forms"]["vanilla"]["fields"]}
        want = _key(backend, form["fallback"])
        record["fallback"] = next(
            (name for name, fields in others.items() if _key(backend, fields) == want), None
        )
    return form["fields"]


def _result(outcome: Any, limit: float) -> dict[str, Any]:
    if outcome.status == "ok":
        value = dict(outcome.value)
        value["status"] = "accepted" if value.pop("accepted") else "refused"
        return value
    if outcome.status == "timeout":
        return {"status": "timeout", "reason": "timeout", "error": f"over {limit:g} CPU seconds"}
    return {"status": outcome.status, "reason": outcome.status, "error": outcome.error}


def _complete(records: list[dict[str, Any]], options: Options) -> set[tuple[str, str]]:
    """Schemas with a record for every backend and variant (a run stopped early leaves some open)."""
    want = len(options.backends) * len(options.variants)
    counts: dict[tuple[str, str], int] = {}
    for record in records:
        if "status" in record:
            counts[record["set"], record["id"]] = counts.get((record["set"], record["id"]), 0) + 1
    return {key for key, n in counts.items() if n == want}


# --- aggregation ----------------------------------------------------------------------------------


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and compile-time percentiles of one group of records (one backend and variant)."""
    accepted = [r for r in records if r["status"] == "accepted"]
    reasons: dict[str, int] = {}
    for record in records:
        if record["status"] != "accepted":
            reasons[record.get("reason") or record["status"]] = (
                reasons.get(record.get("reason") or record["status"], 0) + 1
            )
    compile_ms = percentiles([r["compile_ms"] for r in accepted])
    masks = [t for r in accepted for t in r.get("mask_us") or []]
    client = percentiles([r["client_ms"] for r in records if r.get("client_ms") is not None])
    return {
        "schemas": len(records),
        "accepted": len(accepted),
        "accepted_share": len(accepted) / len(records) if records else None,
        "refused": reasons,
        "timeouts": sum(r["status"] == "timeout" for r in records),
        "crashes": sum(r["status"] == "crash" for r in records),
        "compile_ms": {
            **{k: compile_ms.get(k) for k in ("p50", "p90", "p99")},
            "max": max((r["compile_ms"] for r in accepted), default=None),
        },
        "client_ms": {k: client[k] for k in ("p50", "p99")},  # output_spec, package variant only
        "mask_us": {
            "schemas": sum(1 for r in accepted if r.get("mask_us")),
            "masks": len(masks),
            **{k: v for k, v in percentiles(masks).items() if k in ("p50", "p90", "p99")},
            "max": max(masks, default=None),
        },
    }


FALLBACK = "+fallback"


def with_fallback(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Derived ``<package variant>+fallback`` records: what the package gets in the end. When an
    engine refuses what the package sent, it sends ``Constraint.fallback`` (the regex form to an
    engine that keeps JSON compact, else the plain schema), so that variant's result stands in."""
    by_key = {(r["set"], r["id"], r["backend"], r["variant"]): r for r in records}
    derived = []
    for record in records:
        if not record["variant"].startswith("package"):
            continue
        other = by_key.get((record["set"], record["id"], record["backend"], record.get("fallback")))
        chosen = other if record["status"] != "accepted" and other is not None else record
        derived.append(chosen | {"variant": record["variant"] + FALLBACK})
    return derived


def aggregate(run_result: dict[str, Any]) -> dict[str, Any]:
    """The results document: per backend and variant, over all sets and per set."""
    from .environment import PACKAGES, _version

    options = run_result["options"]
    records = run_result["records"] + with_fallback(run_result["records"])
    variants = list(options["variants"])
    if set(VARIANTS) <= set(variants):  # every fallback's request was compiled
        variants += [v + FALLBACK for v in VARIANTS if v.startswith("package")]
    groups: dict[str, dict[str, Any]] = {}
    for backend in options["backends"]:
        for variant in variants:
            mine = [r for r in records if r["backend"] == backend and r["variant"] == variant]
            groups[f"{backend}/{variant}"] = {
                "backend": backend,
                "variant": variant,
                "all": summarise(mine),
                "sets": {name: summarise([r for r in mine if r["set"] == name]) for name in options["sets"]},
            }
    sent: dict[str, dict[str, int]] = {}  # "backend/variant": request fields -> schemas
    for record in run_result["records"]:
        if record["variant"].startswith("package"):
            label = "+".join(record.get("sent") or ["refused by output_spec"])
            counts = sent.setdefault(f"{record['backend']}/{record['variant']}", {})
            counts[label] = counts.get(label, 0) + 1
    return {
        "command": run_result.get("command"),
        "model": run_result["model"],
        "options": options,
        "versions": {name: _version(name) for name in (*PACKAGES, "transformers")},
        "seconds": run_result["seconds"],
        "worker_restarts": run_result["worker_restarts"],
        "selected": run_result["selected"],
        "finished": run_result["finished"],
        "package_sent": sent,
        "results": groups,
    }
