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
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import (
    CompactJSONWarning,
    ConstraintRejectedError,
    InvalidRequestError,
    RefusalError,
    ServerUnavailableError,
    UnsupportedOutputTypeError,
    UnsupportedServerError,
)
from ..types import CONSTRAINT_HEADER, CONSTRAINT_KINDS, OutputSpec, output_spec
from .base import finish, partial_json
from .prompts import to_messages, to_text

Endpoint = Literal["chat", "completions"]
# vLLM 0.12 replaced the ``guided_*`` fields by ``structured_outputs``; older servers ignore it
# and would return unconstrained text.
MIN_SERVER_VERSION = (0, 12)


@dataclass(frozen=True)
class Generation:
    """One finished, checked generation: its text, its value, and what the server said."""

    text: str
    value: Any
    finish_reason: str | None
    reasoning: str | None = None


@dataclass(frozen=True)
class Request:
    """What to send (``body``: keyword arguments of the openai SDK's ``create``) and how to
    read the answer (``spec``)."""

    endpoint: Endpoint
    body: dict[str, Any]
    spec: OutputSpec
    plain: Request | None = None  # the same request with the plain schema, when it differs

    def after_refusal(self, error: ConstraintRejectedError) -> Request:
        """The request to send after the server refused this one: the plain schema when the
        refused form was compact JSON (with a warning), else ``error`` is raised."""
        if self.plain is None:
            raise error
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
        for choice in sorted(response.choices, key=lambda c: c.index):
            text, reasoning = _content(self.endpoint, choice)
            value = finish(self.spec, text, choice.finish_reason, self.max_tokens)
            out.append(Generation(text, value, choice.finish_reason, reasoning))
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

    def feed(self, chunk: Any) -> str:
        """The new content text in ``chunk`` ("" when it carries none)."""
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

    def finish(self) -> Any:
        """The validated value of the complete text; raises like a non-streamed call would."""
        return finish(self.request.spec, self.text, self.finish_reason, self.request.max_tokens)


@dataclass
class PartialObjects:
    """Partial JSON values from a growing JSON text, each reported once when it changes."""

    text: str = ""
    last: Any = field(default=None)

    def feed(self, delta: str) -> Iterator[Any]:
        self.text += delta
        value = partial_json(self.text)
        if value is not None and value != self.last:
            self.last = value
            yield value


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
) -> Request:
    """The request for one prompt: messages or prompt text, the constraint merged into a copy of
    the caller's ``extra_body``, and the ``X-Outlines-Constraint`` header.

    ``kwargs`` are the caller's openai SDK arguments; neither they nor anything inside them
    is modified. ``plain`` sends JSON schemas as they are (for a server that refused the
    compact form before); otherwise ``Request.plain`` holds that form, to retry with.
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
    body["extra_headers"] = {**(kwargs.get("extra_headers") or {}), CONSTRAINT_HEADER: spec.kind}
    fallback = spec.constraint.fallback() if spec.constraint is not None else None
    fields = spec.constraint.structured_outputs() if spec.constraint is not None else None
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
def mapped_errors(client: Any) -> Iterator[None]:
    """openai SDK errors as ours: a rejected request carries the server's message, an unreachable
    server says where we looked."""
    import openai

    try:
        yield
    except openai.APIConnectionError as exc:
        raise ServerUnavailableError(
            f"cannot reach the vLLM server at {server_root(client)} ({exc}); start it or fix base_url"
        ) from exc
    except openai.APIStatusError as exc:
        if exc.status_code in (400, 422):
            raise ConstraintRejectedError(exc.status_code, _server_message(exc)) from exc
        if exc.status_code in (502, 503, 504):
            raise ServerUnavailableError(
                f"the vLLM server at {server_root(client)} is unavailable (HTTP {exc.status_code}): "
                f"{_server_message(exc)}; retry when it is up"
            ) from exc
        raise
    except openai.APIError as exc:
        # A streamed request is answered 200 first; the server reports a rejected constraint
        # as an error event inside the stream, with the HTTP status as its code.
        if exc.code in ("400", "422"):
            raise ConstraintRejectedError(int(exc.code), _server_message(exc)) from exc
        raise


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
