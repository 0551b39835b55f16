"""Offline batch jobs: JSONL prompts in, JSONL records out, resumable, with a progress bar.

This module runs a job: it reads the input (``input_lines``) against what the output already
holds (``records``) and hands the rest to the local runner or the Ray runner, which turn items
into records (``generation``). The spec is in ``spec``, output-type sources in ``sources``.

Input, one JSON object per line::

    {"id": "a1", "prompt": "Describe a cat."}
    {"id": "a2", "messages": [{"role": "user", "content": "Pick a colour."}], "choices": ["red", "blue"]}

``id`` defaults to the line number. A line may carry its own output type (``schema``, ``regex``,
``choices``, ``grammar`` or ``"json_object": true``); otherwise the job's applies, and with none
the text is free. Output, one record per input line::

    {"line": 1, "id": "a1", "kind": "json", "text": "{...}", "value": {...}}
    {"line": 3, "id": null, "error": {"type": "InvalidInputLine", "message": "..."}}

Crash safety: records are appended in whole lines (one ``write`` per chunk, then ``fsync``), and
a rerun reads the line numbers already done, cuts off a torn last line, and processes only the
rest, so after a crash (even ``kill -9``) no record is lost or written twice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OfflineJobError
from .generation import load_model
from .input_lines import Item, read_input
from .local_runner import run_locally
from .ray_runner import run_on_ray
from .records import RecordWriter, read_done
from .spec import JobSpec


@dataclass
class JobResult:
    total: int  # records in the output after the run
    written: int  # records written by this run
    errors: int  # error records written by this run
    skipped: int  # records found done from an earlier run


def run_job(spec: JobSpec, model: Any = None) -> JobResult:
    """Run (or resume) a job: locally on ``model`` (or a model loaded from ``spec.model``), or
    on Ray Data replicas when ``spec.ray``. Progress goes to stderr as a tqdm bar."""
    from tqdm import tqdm

    if model is None and not Path(spec.model).is_dir():
        raise OfflineJobError(
            f"model {spec.model!r} is not a local model folder; offline jobs embed the engine "
            "(for a server, use model.batch on outlines_vllm.load(url))"
        )
    done = read_done(spec.output)
    pending: list[Item] = []
    bad: list[dict[str, Any]] = []
    total = 0
    for entry in read_input(spec):
        total += 1
        line = entry.line if isinstance(entry, Item) else entry["line"]
        if line in done:
            expected = entry.id if isinstance(entry, Item) else entry["id"]
            if done[line] != expected:
                raise OfflineJobError(
                    f"the output {spec.output} has id {done[line]!r} for input line {line}, whose id is "
                    f"{expected!r}: it belongs to another input; use a new output file"
                )
            continue
        (pending if isinstance(entry, Item) else bad).append(entry)

    result = JobResult(total=len(done), written=0, errors=0, skipped=len(done))
    with contextlib.ExitStack() as stack:
        if model is None and pending and not spec.ray:
            model = load_model(spec)  # before the bar starts, so its rate and ETA count generation only
            stack.callback(model.close)
        writer = stack.enter_context(RecordWriter(spec.output))
        bar = stack.enter_context(
            tqdm(total=total, initial=len(done), unit="rec", desc="offline job", dynamic_ncols=True)
        )

        def sink(records: list[dict[str, Any]]) -> None:
            writer.write(records)
            result.written += len(records)
            result.errors += sum("error" in r for r in records)
            bar.update(len(records))

        if bad:
            sink(bad)
        if pending and spec.ray:
            run_on_ray(spec, pending, sink)
        elif pending:
            run_locally(spec, model, pending, sink)
    result.total += result.written
    return result
