"""Check an OpenAI request at the ingress before any replica sees it.

Client mistakes (broken JSON, wrong field types, invalid schemas or regexes, unknown models,
the removed ``guided_*`` fields that vLLM would silently ignore) become a 4xx with the reason,
so they never cost an engine a request nor show up as a 5xx. The constraint is read through
``types.py`` (the one translation), which gives both the metrics label and the parser the
ingress uses to count invalid outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..errors import OutlinesVLLMError
from ..types import (
    CONSTRAINT_KINDS,
    NO_CONSTRAINT,
    Choice,
    JsonObject,
    JsonSchema,
    OutputSpec,
    Regex,
    output_spec,
)

KINDS = (*CONSTRAINT_KINDS, NO_CONSTRAINT)
LEGACY_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend")
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


class BadRequest(Exception):
    """A client error: HTTP ``status`` and a message that says what to fix."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape, which the openai SDK reads into its exception message."""
        error_type = "invalid_request_error" if self.status != 404 else "not_found_error"
        return {
            "error": {"message": self.message, "type": error_type, "param": self.param, "code": self.status}
        }


@dataclass
class RequestInfo:
    """What the ingress needs to route, label and check one request."""

    body: bytes  # forwarded to the replica untouched (unless the model had to be filled in)
    model: str
    stream: bool
    kind: str  # metrics label: the constraint kind or "none"
    spec: OutputSpec | None  # parses finished outputs, when the constraint can be checked here
    json_text: bool = False  # a grammar the client says produces JSON: check it parses
    # {"messages": ...} or {"prompt": ...}: what a prefix-affinity router reads off a request
    routing: dict[str, Any] = field(default_factory=dict)


def inspect_request(
    raw: bytes, endpoint: str, models: Collection[str], header_kind: str | None
) -> RequestInfo:
    """Validate ``raw`` for ``endpoint``; raise :class:`BadRequest` for anything a client got wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "request body is nested too deeply to parse; flatten it") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"request body must be a JSON object, got {type(body).__name__}")

    model = body.get("model")
    if model is None:
        if len(models) != 1:
            raise BadRequest(400, f"'model' is required; served models: {sorted(models)}", "model")
        model = next(iter(models))
        body["model"] = model
        raw = json.dumps(body).encode()
    if not isinstance(model, str):
        raise BadRequest(400, f"'model' must be a string, got {type(model).__name__}", "model")
    if model not in models:
        raise BadRequest(404, f"model {model!r} does not exist; served models: {sorted(models)}", "model")

    if endpoint == CHAT:
        _check_messages(body.get("messages"))
    else:
        _check_prompt(body.get("prompt"))
    _check_sampling(body)
    for name in LEGACY_FIELDS:
        if name in body:
            raise BadRequest(
                400,
                f"{name!r} was removed in vLLM 0.12 and would be ignored (unconstrained output); "
                "use 'structured_outputs' (json/regex/choice/grammar) or 'response_format'",
                name,
            )
    kind, spec, json_text = _constraint(body)
    if header_kind in KINDS:
        # Compact JSON travels as a regex (or a grammar): the header says the text is JSON.
        json_text = json_text or (header_kind == "json" and kind in ("regex", "grammar"))
        kind = header_kind
    field_name = "messages" if endpoint == CHAT else "prompt"
    routing = {field_name: body.get(field_name)}
    return RequestInfo(raw, model, bool(body.get("stream", False)), kind, spec, json_text, routing)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(400, f"messages[{i}].content must be a string or a list of parts", "messages")


def _check_prompt(prompt: Any) -> None:
    def is_tokens(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)

    ok = (
        isinstance(prompt, str)
        or is_tokens(prompt)
        or (
            isinstance(prompt, list)
            and bool(prompt)
            and all(isinstance(p, str) or is_tokens(p) for p in prompt)
        )
    )
    if not ok:
        raise BadRequest(400, "'prompt' must be a string, a list of strings, or token id list(s)", "prompt")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sampling(body: dict[str, Any]) -> None:
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise BadRequest(400, f"{name!r} must be a positive integer, got {value!r}", name)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(400, f"{name!r} must be a number, got {value!r}", name)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest(400, f"'stream' must be true or false, got {body['stream']!r}", "stream")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise BadRequest(400, "'stop' must be a string or a list of strings", "stop")


def _constraint(body: dict[str, Any]) -> tuple[str, OutputSpec | None, bool]:
    """(kind, checking spec, output-is-JSON) from ``structured_outputs`` or ``response_format``."""
    so = body.get("structured_outputs")
    if so is not None:
        return _structured_outputs(so)
    rf = body.get("response_format")
    if rf is not None:
        return _response_format(rf)
    return "none", None, False


def _structured_outputs(so: Any) -> tuple[str, OutputSpec | None, bool]:
    param = "structured_outputs"
    if not isinstance(so, dict):
        raise BadRequest(400, f"'{param}' must be an object, e.g. {{\"json\": {{...schema...}}}}", param)
    kinds = [k for k in KINDS[:-1] if so.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise BadRequest(
            400,
            f"'{param}' needs exactly one of json, regex, choice, grammar, json_object, "
            f"structural_tag; got {kinds or 'none'}",
            param,
        )
    kind = kinds[0]
    value = so[kind]
    where = f"{param}.{kind}"
    if kind == "json":
        if not isinstance(value, dict | str):
            raise BadRequest(400, f"'{where}' must be a JSON schema object (or its JSON text)", where)
        return kind, _spec(lambda: JsonSchema(value), where), True
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise BadRequest(400, f"'{where}' must be a non-empty regex string", where)
        return kind, _spec(lambda: Regex(value), where), False
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise BadRequest(400, f"'{where}' must be a non-empty list of strings", where)
        return kind, _spec(lambda: Choice(value), where), False
    if kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(400, f"'{where}' must be a non-empty grammar string (Lark, GBNF or EBNF)", where)
        return kind, None, False
    if kind == "json_object":
        if value is not True:
            raise BadRequest(400, f"'{where}' must be true", where)
        return kind, output_spec(JsonObject), True
    if not isinstance(value, str | dict):
        raise BadRequest(400, f"'{where}' must be an object or its JSON text", where)
    return kind, None, False


def _response_format(rf: Any) -> tuple[str, OutputSpec | None, bool]:
    param = "response_format"
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return "none", None, False
    if kind == "json_object":
        return "json_object", output_spec(JsonObject), True
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema", js.get("json_schema")) if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(400, "'response_format.json_schema.schema' must be a JSON schema object", param)
        return "json", _spec(lambda: JsonSchema(schema), f"{param}.json_schema.schema"), True
    if kind == "structural_tag":
        return "structural_tag", None, False
    raise BadRequest(
        400, "'response_format' must be an object whose 'type' is text, json_object or json_schema", param
    )


def _spec(output_type: Callable[[], Any], where: str) -> OutputSpec:
    """The checking spec of ``output_type()``; a malformed schema or regex is the client's error."""
    try:
        return output_spec(output_type(), compact=False)
    except (OutlinesVLLMError, ValueError, TypeError) as exc:
        raise BadRequest(400, f"invalid '{where}': {exc}", where) from None
    except RecursionError:
        raise BadRequest(400, f"'{where}' is nested too deeply; flatten it", where) from None
