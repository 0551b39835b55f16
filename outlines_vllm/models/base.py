"""What every model shares, online or offline, sync or async: what a generation says happened
(:class:`Generation`, :class:`Usage`, :class:`TextStream`), turning a finished generation into
the caller's value, and a growing JSON text into partial objects while it streams."""

from __future__ import annotations

import contextlib
import functools
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import OutputValidationError, TruncatedOutputError, engine_error, generation_failed
from ..types import OutputSpec


@dataclass(frozen=True)
class Usage:
    """Tokens a request used, as the server's ``usage`` counts them: the prompt's, and those
    generated (summed over the choices when ``n > 1``)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: Any) -> Usage | None:
        """From an openai SDK ``usage`` object (None when the server sent none)."""
        if usage is None:
            return None
        return cls(usage.prompt_tokens or 0, usage.completion_tokens or 0)


@dataclass(frozen=True)
class Generation:
    """One finished, checked generation: its text, its value, why it stopped (``finish_reason``:
    "stop", "length", ...) and the request's token ``usage``."""

    text: str
    value: Any
    finish_reason: str | None
    reasoning: str | None = None
    usage: Usage | None = None


class TextStream:
    """Text chunks as they are generated: iterate it (``for`` on a sync model, ``async for`` on
    an async one). When it ends, ``text``, ``finish_reason`` and ``usage`` say what happened,
    also when the end raised (truncated or invalid output)."""

    def __init__(self, chunks: Callable[[TextStream], Iterator[str] | AsyncIterator[str]]) -> None:
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._chunks = chunks(self)

    def __iter__(self) -> Iterator[str]:
        return self._chunks  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks  # type: ignore[return-value]

    def ended(self, text: str, finish_reason: str | None, usage: Usage | None) -> None:
        self.text, self.finish_reason, self.usage = text, finish_reason, usage


def finish(
    spec: OutputSpec,
    text: str,
    finish_reason: str | None,
    max_tokens: int | None = None,
    usage: Usage | None = None,
) -> Any:
    """The validated value of one finished generation.

    Constrained output that stopped at the token limit is incomplete by definition, so it
    raises :class:`TruncatedOutputError` instead of being parsed; output that does not parse
    raises :class:`OutputValidationError`. Both keep the text on ``.text``. A request the
    engine ended with an error raises the named error a server would have answered with.
    """
    if finish_reason == "error":
        raise generation_failed(constrained=spec.constraint is not None)
    if finish_reason == "length" and spec.constraint is not None:
        error = TruncatedOutputError(text, max_tokens)
        error.usage = usage
        raise error
    try:
        return spec.parse(text)
    except OutputValidationError as error:
        error.usage, error.finish_reason = usage, finish_reason
        raise


@dataclass
class PartialObjects:
    """Partial values from a growing JSON text, each reported once when it changes: instances of
    a partial twin of the output type's Pydantic model (every field optional, as instructor
    does), plain dicts for other JSON types. ``final`` gives the complete, checked value."""

    spec: OutputSpec | None = None
    text: str = ""
    last: Any = field(default=None)

    def __post_init__(self) -> None:
        model = self.spec.output_type if self.spec is not None else None
        self._partial = _partial_model(model) if _is_model(model) else None

    def feed(self, delta: str) -> Iterator[Any]:
        self.text += delta
        value = partial_json(self.text)
        if value is None or value == self.last:
            return
        if self._partial is not None:
            try:
                typed = self._partial.model_validate(value)
            except ValueError:  # a value mid-way (a partial enum string, ...): wait for more
                return
            self.last = value
            yield typed
        else:
            self.last = value
            yield value

    def end(self) -> Iterator[Any]:
        """The complete value, validated as the output type, unless the last partial (a dict)
        already was it."""
        assert self.spec is not None
        value = self.spec.parse(self.text)
        if self._partial is not None or value != self.last:
            yield value


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


@functools.cache
def _partial_model(model: Any) -> Any:
    """``model`` with every field optional (default None), nested models and containers too."""
    from pydantic import Field, create_model

    fields = {
        name: (_partial_type(info.annotation) | None, Field(default=None, alias=info.alias))
        for name, info in model.model_fields.items()
    }
    return create_model(f"Partial{model.__name__}", __module__=model.__module__, **fields)


def _partial_type(tp: Any) -> Any:
    if _is_model(tp):
        return _partial_model(tp)
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if not args or origin in (typing.Literal, typing.Annotated):
        return tp
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, map(_partial_type, args))
    try:
        return origin[tuple(map(_partial_type, args))]
    except TypeError:
        return tp


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
