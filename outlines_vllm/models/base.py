"""What every model shares, online or offline, sync or async: turning a finished generation
into the caller's value, and a growing JSON text into partial objects while it streams."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import TruncatedOutputError, engine_error, generation_failed
from ..types import OutputSpec


def finish(spec: OutputSpec, text: str, finish_reason: str | None, max_tokens: int | None = None) -> Any:
    """The validated value of one finished generation.

    Constrained output that stopped at the token limit is incomplete by definition, so it
    raises :class:`TruncatedOutputError` instead of being parsed; output that does not parse
    raises :class:`OutputValidationError`. Both keep the text on ``.text``. A request the
    engine ended with an error raises the named error a server would have answered with.
    """
    if finish_reason == "error":
        raise generation_failed(constrained=spec.constraint is not None)
    if finish_reason == "length" and spec.constraint is not None:
        raise TruncatedOutputError(text, max_tokens)
    return spec.parse(text)


def partial_json(text: str) -> Any | None:
    """The JSON value a prefix of JSON text is growing into (None before the first value).

    Strings cut mid-way are kept, so a streamed ``{"name": "Ali`` gives ``{"name": "Ali"}``.
    """
    from pydantic_core import from_json

    try:
        return from_json(text, allow_partial="trailing-strings")
    except ValueError:
        return None


@contextlib.contextmanager
def engine_errors(constrained: bool) -> Iterator[None]:
    """An embedded engine's exceptions as the named errors a server's answers map to (a prompt
    too long, a constraint it refuses, ...), so code moves between online and offline unchanged."""
    try:
        yield
    except Exception as exc:
        mapped = engine_error(exc, constrained=constrained)
        if mapped is None:
            raise
        raise mapped from exc
