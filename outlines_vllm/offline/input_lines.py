"""The input file of a job: one JSON object per line, each a prompt (or messages) with an
optional output type of its own; a line that cannot be used becomes an error record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import OfflineJobError, OutlinesVLLMError
from .records import error_record
from .sources import OUTPUT_KEYS, check_output_source
from .spec import JobSpec


@dataclass
class Item:
    """One valid input line, in a form that travels (JSON) to Ray replicas."""

    line: int
    id: Any
    prompt: Any  # a string or a list of messages
    output: dict[str, Any] | None  # one of OUTPUT_KEYS -> value, or None for free text


def read_input(spec: JobSpec) -> Iterator[Item | dict[str, Any]]:
    """Each input line as an Item, or as an error record when it cannot be used."""
    try:
        handle = spec.input.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise OfflineJobError(f"cannot read the input file {spec.input}: {exc}") from exc
    seen: dict[Any, int] = {}
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = parse_line(number, raw, spec.output_type)
            except _BadLine as bad:
                yield error_record(number, bad.id, "InvalidInputLine", str(bad))
                continue
            key = json.dumps(item.id)
            if key in seen:
                yield error_record(
                    number, item.id, "InvalidInputLine", f"duplicate id, first on line {seen[key]}"
                )
                continue
            seen[key] = number
            yield item


class _BadLine(Exception):
    def __init__(self, reason: str, id_: Any = None) -> None:
        super().__init__(reason)
        self.id = id_


def parse_line(number: int, raw: str, default_output: dict[str, Any] | None) -> Item:
    """An input line as an Item; raises _BadLine with the reason when it cannot be used."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _BadLine(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadLine(f"a line must be a JSON object, got {type(data).__name__}")
    id_ = data.get("id", number)
    if not isinstance(id_, str | int) or isinstance(id_, bool):
        raise _BadLine(f"id must be a string or an integer, got {json.dumps(id_)}")
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        raise _BadLine("give exactly one of 'prompt' (a string) or 'messages' (a list)", id_)
    prompt = data["prompt"] if has_prompt else data["messages"]
    try:
        from ..models.prompts import to_messages

        to_messages(prompt)
    except OutlinesVLLMError as exc:
        raise _BadLine(str(exc), id_) from None
    own = {key: data[key] for key in OUTPUT_KEYS if key in data}
    if len(own) > 1:
        raise _BadLine(f"give at most one output type per line, got {sorted(own)}", id_)
    output = own or default_output
    if output is not None:
        try:
            check_output_source(output, "this line's output type")
        except OfflineJobError as exc:
            raise _BadLine(str(exc), id_) from None
    return Item(number, id_, prompt, output)
