"""Turning items into records on an engine: the one call the local runner and every Ray
replica make for a chunk of items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .input_lines import Item
from .records import error_record
from .sources import output_type_of
from .spec import JobSpec


def generate_records(model: Any, items: Sequence[Item], spec: JobSpec) -> list[dict[str, Any]]:
    """One record per item, from ONE batch call on ``model`` (each item its own output type)."""
    specs = [output_type_of(json.dumps(item.output, sort_keys=True)) for item in items]
    options = {"endpoint": spec.endpoint} if spec.endpoint else {}
    texts = model.batch(
        [item.prompt for item in items],
        specs,
        return_exceptions=True,
        progress=False,
        **options,
        **spec.sampling,
    )
    records = []
    for item, out_spec, text in zip(items, specs, texts, strict=True):
        if isinstance(text, Exception):
            record = error_record(item.line, item.id, type(text).__name__, str(text))
            if getattr(text, "text", None) is not None:
                record["text"] = text.text
        else:
            record = {
                "line": item.line,
                "id": item.id,
                "kind": out_spec.kind,
                "text": text,
                "value": out_spec.parse(text),
            }
        records.append(record)
    return records


def load_model(spec: JobSpec) -> Any:
    """The job's engine: ``spec.model`` (a local folder) through :func:`outlines_vllm.load`."""
    from ..switch import load

    return load(spec.model, **spec.engine)
