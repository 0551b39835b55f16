"""Offline jobs on one embedded engine in this process, chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .generation import generate_records
from .input_lines import Item
from .spec import JobSpec


def run_locally(
    spec: JobSpec, model: Any, pending: list[Item], sink: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Generate records for ``pending`` on ``model``, ``spec.chunk_size`` items per engine call,
    handing each chunk's records to ``sink``."""
    for start in range(0, len(pending), spec.chunk_size):
        sink(generate_records(model, pending[start : start + spec.chunk_size], spec))
