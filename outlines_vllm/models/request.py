"""The one request builder and the one response parser of the online models.

``VLLM`` and ``AsyncVLLM`` differ only in how they wait for the server; everything about what
is sent (``build_request``) and what comes back (``Request.generations``, ``StreamReader``,
``mapped_errors``) lives here, free of I/O, so both behave the same and the exact request body
can be pinned by unit tests.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import (
    CompactJSONWarning,
    ConstraintRejectedError,
    InvalidRequestError,
    RefusalError,
    RequestFailedError,
    ServerUnavailableError,
    UnsupportedOutputTypeError,
    UnsupportedServerError,
    request_error,
)
from ..types import CONSTRAINT_HEADER, CONSTRAINT_KINDS, OutputSpec, output_spec
from .base import Generation, PartialObjects, TextStream, Usage, finish  # noqa: F401 - PartialObjects: re-exported
from .prompts import to_messages, to_text

Endpoint = Literal["chat", "completions"]
# vLLM 0.12 replaced the ``guided_*`` fields by ``structured_outputs``; older servers ignore it
# and would return unconstrained text.
MIN_SERVER_VERSION = (0, 12)


@dataclass(frozen=True)
class Request:
    """What to send (``body``: keyword arguments of the openai SDK's ``create``) and how to
    read the answer (``spec``)."""

    endpoint: Endpoint
    body: dict[str, Any]
    spec: OutputSpec
    plain: Request | None = None  # the same request with the fallback form, when there is one

    def after_refusal(self, error: ConstraintRejectedError, *, warn: bool = True) -> Request:
        """The request to send after the server refused this one: the fallback form when the
        refused form was compact JSON (the plain schema, with a warning), else ``error`` is raised."""
        if self.plain is None:
            raise error
        if not warn:
            return self.plain
        warnings.warn(
            f"the server refused compact JSON ({error.message}); sending the plain schema, so "
            "this server may pad JSON with whitespace. Start it with --structured-outputs-config "
            '\'{"backend": "xgrammar", "disable_any_whitespace": true}\' to keep JSON compact.',
            CompactJSONWarning,
            stacklevel=4,
        )
        return self.plain

    @property
    def max_tokens(self) -> int | None:
        return self.body.get("max_completion_tokens") or self.body.get("max_tokens")

    def create(self, client: Any) -> Any:
        """The SDK call (sync or async, as ``client`` is) with this body; the caller awaits it."""
        resource = client.chat.completions if self.endpoint == "chat" else client.completions
        return resource.create(**self.body)

    def generations(self, response: Any) -> list[Generation]:
        """Every choice of a finished response, checked: truncated, refused or invalid output
        raises instead of being returned."""
        out = []
        usage = Usage.of(getattr(response, "usage", None))
        for choice in sorted(response.choices, key=lambda c: c.index):
            text, reasoning = _content(self.endpoint, choice)
            value = finish(self.spec, text, choice.finish_reason, self.max_tokens, usage)
            out.append(Generation(text, value, choice.finish_reason, reasoning, usage))
        return out

    def reader(self) -> StreamReader:
        return StreamReader(self)


@dataclass
class StreamReader:
    """Turns streamed chunks into text deltas and checks the whole text when the stream ends."""

    request: Request
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None

    def feed(self, chunk: Any) -> str:
        """The new content text in ``chunk`` ("" when it carries none)."""
        self.usage = Usage.of(getattr(chunk, "usage", None)) or self.usage
        delta = ""
        for choice in chunk.choices:
            if self.request.endpoint == "chat":
                if refusal := getattr(choice.delta, "refusal", None):
                    raise RefusalError(refusal)
                delta += choice.delta.content or ""
                self.reasoning += _reasoning(choice.delta) or ""
            else:
                delta += choice.text or ""
            self.finish_reason = choice.finish_reason or self.finish_reason
        self.text += delta
        return delta

    def finish(self, sink: TextStream | None = None) -> Any:
        """The validated value of the complete text; raises like a non-streamed call would.
        ``sink`` learns the text, finish reason and usage first."""
        if sink is not None:
            sink.ended(self.text, self.finish_reason, self.usage)
        return finish(self.request.spec, self.text, self.finish_reason, self.request.max_tokens, self.usage)


_OURS = {"extra_body", "extra_headers"}


def build_request(
    model: str,
    prompt: Any,
    output_type: Any,
    kwargs: dict[str, Any],
    *,
    endpoint: Endpoint = "chat",
    stream: bool = False,
    server_version: str | None = None,
    plain: bool = False,
    engine_compact: bool = False,
) -> Request:
    """The request for one prompt: messages or prompt text, the constraint merged into a copy of
    the caller's ``extra_body``, and the ``X-Outlines-Constraint`` header.

    ``kwargs`` are the caller's openai SDK arguments; neither they nor anything inside them
    is modified. ``plain`` sends JSON schemas as they are (for a server that refused the
    compact form before); otherwise ``Request.plain`` holds that form, to retry with.
    ``engine_compact``: the server said its engine keeps JSON compact (``engine_info.py``):
    schemas go as the schema, and ``Request.plain`` holds the regex form instead.
    """
    if endpoint not in ("chat", "completions"):
        raise InvalidRequestError(f'endpoint must be "chat" or "completions", got {endpoint!r}')
    if "stream" in kwargs:
        raise InvalidRequestError("pass no stream= argument; call .stream(...) to stream")
    spec = output_spec(output_type)
    if spec.constraint is not None:
        check_server_version(server_version)
    if stream and (kwargs.get("n") or 1) > 1:
        raise InvalidRequestError("streaming returns one generation; use n=1 or a non-streamed call")

    body: dict[str, Any] = {key: value for key, value in kwargs.items() if key not in _OURS}
    body["model"] = model
    if endpoint == "chat":
        body["messages"] = to_messages(prompt)
    else:
        body["prompt"] = to_text(prompt)
    if stream:
        body["stream"] = True
        # The last chunk then carries the token usage (a caller's own stream_options win).
        body.setdefault("stream_options", {"include_usage": True})
    body["extra_headers"] = {**(kwargs.get("extra_headers") or {}), CONSTRAINT_HEADER: spec.kind}
    fields = fallback = None
    if spec.constraint is not None:
        fields = spec.constraint.structured_outputs(engine_compact=engine_compact)
        fallback = spec.constraint.fallback(engine_compact=engine_compact)
    if plain and fallback is not None:
        fields, fallback = fallback, None
    request = Request(endpoint, _with_constraint(body, kwargs.get("extra_body"), fields), spec)
    if fallback is None:
        return request
    return dataclasses.replace(
        request, plain=Request(endpoint, _with_constraint(body, kwargs.get("extra_body"), fallback), spec)
    )


def _with_constraint(
    body: dict[str, Any], callers: dict[str, Any] | None, fields: dict[str, Any] | None
) -> dict[str, Any]:
    """``body`` with a copy of the caller's ``extra_body`` holding the constraint ``fields``."""
    extra_body = copy.deepcopy(callers or {})
    if fields is not None:
        extra_body["structured_outputs"] = _merge_constraint(extra_body.get("structured_outputs"), fields)
    return {**body, "extra_body": extra_body} if extra_body else dict(body)


def _merge_constraint(callers: Any, ours: dict[str, Any]) -> dict[str, Any]:
    """The caller's ``structured_outputs`` options (backend, whitespace, ...) plus our constraint."""
    if callers is None:
        return ours
    if not isinstance(callers, dict):
        raise InvalidRequestError(f"extra_body['structured_outputs'] must be a dict, got {callers!r}")
    if clash := set(CONSTRAINT_KINDS) & callers.keys():
        raise InvalidRequestError(
            f"extra_body['structured_outputs'] already holds a constraint ({sorted(clash)}) and "
            "output_type gives another; pass one of them (output_type=None to send your own)"
        )
    return {**callers, **ours}


def check_server_version(version: str | None) -> None:
    """Refuse servers that would ignore ``structured_outputs`` (an unknown version passes: the
    parser still rejects unconstrained text that does not fit the type)."""
    if version is None:
        return
    found = re.match(r"v?(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < MIN_SERVER_VERSION:
        raise UnsupportedServerError(
            f"the server runs vLLM {version}, which ignores the structured_outputs field and would "
            "return unconstrained text; upgrade the server to vLLM >= "
            + ".".join(map(str, MIN_SERVER_VERSION))
        )


def spec_for_partials(output_type: Any) -> OutputSpec:
    """The spec of a type that streams as partial objects (JSON kinds only)."""
    spec = output_spec(output_type)
    if spec.kind not in ("json", "json_object"):
        raise UnsupportedOutputTypeError(
            f"partial objects need a JSON output type (a model, schema or JsonObject), got "
            f"{output_type!r}; use .stream() for text"
        )
    return spec


def server_root(client: Any) -> str:
    """The server's base URL without the ``/v1`` the openai client adds."""
    return re.sub(r"/v1/?$", "", str(client.base_url).rstrip("/"))


@contextlib.contextmanager
def mapped_errors(client: Any, request: Request | None = None) -> Iterator[None]:
    """openai SDK errors as ours (see :func:`~outlines_vllm.errors.request_error`): each failure
    named by its HTTP status and vLLM's message; an unreachable server says where we looked."""
    import openai

    constrained = request is not None and request.spec.constraint is not None
    try:
        yield
    except openai.APIConnectionError as exc:  # APITimeoutError included
        where = f"the vLLM server at {server_root(client)}"
        raise ServerUnavailableError(None, f"cannot reach it ({exc})", source=where) from exc
    except openai.APIStatusError as exc:
        raise request_error(exc.status_code, _server_message(exc), constrained=constrained) from exc
    except openai.APIError as exc:
        # A streamed request is answered 200 first; the server reports a failure as an error
        # event inside the stream, with the HTTP status as its code.
        status = _status_of(exc)
        if status is None:
            raise
        raise request_error(status, _server_message(exc), constrained=constrained) from exc


@dataclass
class Retries:
    """When to send a failed request again: only errors that say a retry can help
    (``retryable``), at most the client's ``max_retries`` times, with the openai SDK's own
    backoff (0.5 s doubling to 8 s, with jitter).

    The models send through a copy of the client whose own retries are off (the SDK retries
    every 5xx, and vLLM answers a grammar it cannot compile with a deterministic 500), so
    this is the one place that decides.
    """

    limit: int
    done: int = 0

    @classmethod
    def of(cls, client: Any) -> Retries:
        return cls(int(getattr(client, "max_retries", 0) or 0))

    def pause(self, error: RequestFailedError) -> float:
        """Seconds to wait before the next attempt; raises ``error`` when none should follow."""
        if not error.retryable or self.done >= self.limit:
            raise error
        self.done += 1
        return min(0.5 * 2 ** (self.done - 1), 8.0) * (1 - 0.25 * random.random())


def without_retries(client: Any) -> Any:
    """A copy of ``client`` (same connection pool) that never retries by itself."""
    with_options = getattr(client, "with_options", None)
    return with_options(max_retries=0) if with_options else client


def _status_of(exc: Any) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
        return int(code)
    return None


def _server_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)


def _content(endpoint: Endpoint, choice: Any) -> tuple[str, str | None]:
    if endpoint == "completions":
        return choice.text or "", None
    message = choice.message
    if refusal := getattr(message, "refusal", None):
        raise RefusalError(refusal)
    return message.content or "", _reasoning(message)


def _reasoning(message: Any) -> str | None:
    """Reasoning text, under vLLM's current (``reasoning``) or older (``reasoning_content``) name."""
    return getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
