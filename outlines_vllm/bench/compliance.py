"""``outlines-vllm bench compliance``: per JSONSchemaBench set and backend, through a real engine,
the share of sampled schemas the engine accepts and the share of its answers that are valid
(JSONSchemaBench's coverage and compliance), truncated answers counted apart.

Each schema is sent as plain ``structured_outputs.json`` (what any vLLM client sends) to an
embedded engine started with that backend, with a prompt showing the schema; answers are
judged by ``validate.judge`` (jsonschema, and never at the token limit).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, TypeVar

from ..datasets import JSONSCHEMABENCH_SETS, jsonschemabench
from ..errors import ContextLengthError, engine_error, generation_failed
from .paths import Record, Sampling, _error
from .validate import judge

T = TypeVar("T")
PROMPT = "Generate one realistic JSON instance of this JSON schema. Reply with the JSON only.\n"


def sample(sets: list[str], per_set: int, seed: int) -> list[dict[str, Any]]:
    """``per_set`` schemas of each set (seeded), as ``{"set", "id", "schema"}``."""
    if unknown := [s for s in sets if s not in JSONSCHEMABENCH_SETS]:
        raise ValueError(f"unknown JSONSchemaBench sets {unknown}; choose from {list(JSONSCHEMABENCH_SETS)}")
    rng = random.Random(seed)
    chosen = []
    for name in sets:
        rows = jsonschemabench(name)
        chosen += [{"set": name, **row} for row in rng.sample(rows, min(per_set, len(rows)))]
    return chosen


def _check(schema: dict[str, Any]) -> Any:
    """The spec answers are judged by, or None when the schema cannot judge anything."""
    from ..types import output_spec

    try:
        return output_spec(schema, compact=False)
    except Exception:
        return None


class EngineDied(RuntimeError):
    """The engine stopped answering during a call: its core died, or the call outlived its limit
    (vLLM's outlines backend gives up a regex compile after 5 s, but the compile thread runs on
    and its engine core can die and leave the caller waiting forever)."""


def _engine_dead(llm: Any) -> bool:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    return bool(getattr(getattr(core, "resources", None), "engine_dead", False))


def _watched(llm: Any, call: Callable[[], T], timeout_s: float) -> T:
    """``call()`` in a daemon thread (a hung engine call cannot be interrupted, only left),
    raising ``EngineDied`` when the engine core dies or the call takes over ``timeout_s``."""
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            done["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="compliance-call")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        thread.join(0.5)
        if thread.is_alive() and (_engine_dead(llm) or time.monotonic() > deadline):
            why = "its engine core died" if _engine_dead(llm) else f"no answer after {timeout_s:.0f} s"
            raise EngineDied(f"the engine stopped answering ({why})")
    if "error" in done:
        raise done["error"]
    return done["value"]


def _generate(llm: Any, rows: list[dict[str, Any]], sampling: Sampling, timeout_s: float) -> list[Record]:
    """One engine call for all rows; when the engine refuses the batch (one bad schema aborts
    it), each row alone, so only the refused ones fail. ``EngineDied`` passes through."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    def params(row: dict[str, Any]) -> Any:
        return SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            seed=sampling.seed,
            structured_outputs=StructuredOutputsParams(json=row["schema"]),
        )

    def call(batch: list[dict[str, Any]]) -> list[Record]:
        messages = [[{"role": "user", "content": PROMPT + json.dumps(r["schema"])}] for r in batch]
        outputs = _watched(
            llm, lambda: llm.chat(messages, [params(r) for r in batch], use_tqdm=False), timeout_s
        )
        return [Record(True, o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]

    def alone(row: dict[str, Any]) -> Record:
        try:
            return call([row])[0]
        except EngineDied:
            raise
        except Exception as exc:  # named as a server would (ContextLengthError, ConstraintRejectedError...)
            return Record(False, error=_error(engine_error(exc, constrained=True) or exc))

    try:
        return call(rows)
    except EngineDied:
        raise
    except Exception:
        return [alone(row) for row in rows]


class _Engine:
    """The engine ``start()`` gives (a context manager), started again after a schema kills it."""

    def __init__(self, start: Callable[[], AbstractContextManager[Any]]) -> None:
        self.start = start
        self._stack = ExitStack()
        self.llm = self._stack.enter_context(start())

    def restart(self) -> None:
        self._stack.close()  # shuts the dead or hung engine core down
        self.llm = self._stack.enter_context(self.start())

    def close(self) -> None:
        self._stack.close()


def _records(
    engine: _Engine, rows: list[dict[str, Any]], sampling: Sampling, timeout_s: float
) -> list[Record]:
    """``_generate`` on a set; after an engine death, row by row on a fresh engine, so the one
    schema that kills it is recorded as such and every other one is still answered."""
    try:
        return _generate(engine.llm, rows, sampling, timeout_s)
    except EngineDied:
        engine.restart()
    records = []
    for row in rows:
        try:
            records += _generate(engine.llm, [row], sampling, timeout_s)
        except EngineDied as exc:
            records.append(Record(False, error=_error(exc)))
            engine.restart()
    return records


def run(
    start: Callable[[], AbstractContextManager[Any]],
    rows: list[dict[str, Any]],
    backend: str,
    sampling: Sampling,
    *,
    call_timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """One record per row: ``accepted`` by the engine, and for accepted ones the verdict. The
    engine comes from ``start()`` and is started again when a schema kills it (``killed_engine``)."""
    from tqdm.auto import tqdm

    records = []
    sets = list(dict.fromkeys(r["set"] for r in rows))
    engine = _Engine(start)
    try:
        for name in tqdm(sets, desc=f"compliance {backend}", unit="set"):
            mine = [r for r in rows if r["set"] == name]
            for row, record in zip(mine, _records(engine, mine, sampling, call_timeout_s), strict=True):
                records.append(_record(row, backend, record))
    finally:
        engine.close()
    return records


def _record(row: dict[str, Any], backend: str, record: Record) -> dict[str, Any]:
    out = {"set": row["set"], "id": row["id"], "backend": backend, "accepted": record.ok}
    if not record.ok:
        error = record.error or ""
        # A schema too long to show the model says nothing about the backend: apart.
        too_long = error.startswith(ContextLengthError.__name__)
        return out | {
            "error": error,
            "too_long": too_long,
            "killed_engine": error.startswith(EngineDied.__name__),
        }
    if record.finish_reason == "error":  # how vLLM ends a request whose grammar failed to compile
        return out | {"accepted": False, "error": _error(generation_failed(constrained=True))}
    check = _check(row["schema"])
    verdict = judge(check, record.text, record.finish_reason) if check else None
    return out | {
        "finish_reason": record.finish_reason,
        "valid": bool(verdict and verdict.valid),
        "truncated": bool(verdict and verdict.truncated),
        "judged": check is not None,
        "reason": verdict.reason if verdict else "schema cannot be checked",
        "text": record.text[:2000],
    }


def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per backend and set (and ``all``): schemas, accepted, valid, invalid, truncated, shares.
    ``valid_share`` is over accepted schemas (compliance), ``accepted_share`` over all (coverage)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for backend in dict.fromkeys(r["backend"] for r in records):
        mine = [r for r in records if r["backend"] == backend]
        groups = {
            name: [r for r in mine if r["set"] == name] for name in dict.fromkeys(r["set"] for r in mine)
        }
        out[backend] = {name: _counts(rows) for name, rows in {**groups, "all": mine}.items()}
    return out


def _counts(every: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in every if not r.get("too_long")]
    accepted = [r for r in rows if r["accepted"]]
    valid = sum(r["valid"] for r in accepted)
    truncated = sum(r["truncated"] for r in accepted)
    return {
        "schemas": len(rows),
        "too_long": len(every) - len(rows),
        "accepted": len(accepted),
        "valid": valid,
        "truncated": truncated,
        "invalid": len(accepted) - valid - truncated,
        "killed_engine": sum(bool(r.get("killed_engine")) for r in rows),
        "accepted_share": len(accepted) / len(rows) if rows else None,
        "valid_share": valid / len(accepted) if accepted else None,
    }


def _sets(table: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(s for per_set in table.values() for s in per_set if s != "all"))


def markdown(document: dict[str, Any]) -> str:
    table = document["results"]
    backends = list(table)
    sets = [*_sets(table), "all"]
    head = "| set | too long | " + " | ".join(f"{b}: accepted / valid (truncated)" for b in backends) + " |"
    rows = [head, "|---|---|" + "---|" * len(backends)]
    for name in sets:
        cells = [str(table[backends[0]].get(name, {}).get("too_long", "-"))]
        for backend in backends:
            c = table[backend].get(name)
            cells.append(
                f"{c['accepted']}/{c['schemas']} / {c['valid']}/{c['accepted']} ({c['truncated']})"
                if c
                else "-"
            )
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    o = document["options"]
    return (
        "# Compliance per JSONSchemaBench set (through the engine)\n\n"
        f"`{document.get('command')}`\n\n"
        f"{o['per_set']} schemas per set (seed {o['seed']}), sent as plain `structured_outputs.json` to an "
        f"embedded engine per backend on `{Path(document['model']).name}`; max_tokens {o['max_tokens']}, "
        f"temperature {o['temperature']}. Accepted: the engine took the request (coverage). Valid: the "
        "answer passes the schema (jsonschema) and did not stop at max_tokens (compliance, over accepted "
        "schemas); truncated answers are counted apart, in brackets. A request whose grammar the engine "
        "failed to compile (finish reason `error`) counts as not accepted. Too long: sampled schemas whose "
        "prompt (the schema shown in full) exceeds the model's context; they are left out of both "
        "shares, since they say nothing about the backend.\n\n" + "\n".join(rows) + "\n" + _deaths(document)
    )


def _deaths(document: dict[str, Any]) -> str:
    """The schemas that killed an engine (counted as not accepted; the run went on on a new one)."""
    killed = [r for r in document["records"] if r.get("killed_engine")]
    if not killed:
        return ""
    lines = "".join(f"- {r['backend']}: {r['set']} `{r['id']}` ({r['error']})\n" for r in killed)
    return f"\nSchemas that killed the engine (not accepted; the run went on on a fresh engine):\n\n{lines}"


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = document["results"]
    sets = _sets(table)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(table), 1)
    for i, (backend, per_set) in enumerate(table.items()):
        counts = [per_set.get(s) or {"valid": 0, "schemas": 0} for s in sets]
        shares = [100 * c["valid"] / c["schemas"] if c["schemas"] else 0 for c in counts]
        ax.bar([x + i * width for x in range(len(sets))], shares, width, label=backend)
    ax.set_xticks([x + width * (len(table) - 1) / 2 for x in range(len(sets))], sets, rotation=30, ha="right")
    ax.set_ylabel("% of sampled schemas with a valid answer")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("JSONSchemaBench: valid answers per set and backend (engine, default model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(document: dict[str, Any], out: Path) -> None:
    from .report import save

    print(markdown(document))
    save(out, document, markdown(document), lambda path: plot(document, path), "compliance.png")
