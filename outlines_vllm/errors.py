"""Named errors. Each says what went wrong and what to do; none hides generated text.

Every error that carries generated output keeps it on ``.text`` so nothing is lost.
"""

from __future__ import annotations

import re
from typing import Any


class OutlinesVLLMError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedOutputTypeError(OutlinesVLLMError, TypeError):
    """The output type cannot be turned into a vLLM constraint."""


class InvalidSchemaError(OutlinesVLLMError, ValueError):
    """A JSON schema, regex or grammar is malformed before it ever reaches vLLM."""


class TruncatedOutputError(OutlinesVLLMError):
    """Generation stopped at the token limit, so the constrained output is incomplete.
    ``usage`` (token counts) is set when the model knows it."""

    usage: Any = None

    def __init__(self, text: str, max_tokens: int | None = None) -> None:
        self.text = text
        self.max_tokens = max_tokens
        limit = f"max_tokens={max_tokens}" if max_tokens else "the token limit"
        super().__init__(
            f"output was cut off by {limit} after {len(text)} characters, so it is not a complete "
            "value; raise max_tokens or keep compact JSON on (the default). Text: " + _preview(text)
        )


class OutputValidationError(OutlinesVLLMError, ValueError):
    """The generated text does not parse or validate as the requested type. ``usage`` (token
    counts) and ``finish_reason`` are set when the model knows them."""

    usage: Any = None
    finish_reason: str | None = None

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(
            f"generated text does not match the output type: {reason}. If the server may not "
            "support this constraint, check its vLLM version and structured-output backend. "
            "Text: " + _preview(text)
        )


class RefusalError(OutlinesVLLMError):
    """The model refused to answer (the server returned a refusal instead of content)."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal
        super().__init__(f"the model refused: {refusal}")


class InvalidRequestError(OutlinesVLLMError, ValueError):
    """The call's arguments cannot be honoured together (e.g. two constraints, chat input on
    the completions endpoint, streaming with ``n > 1``)."""


class UnsupportedServerError(OutlinesVLLMError):
    """The server's vLLM is too old to apply constraints the way we send them."""


class InvalidPromptError(OutlinesVLLMError, TypeError):
    """A prompt is neither text nor a list of chat messages."""


class UnsupportedModelError(OutlinesVLLMError, TypeError):
    """``load`` / ``from_vllm_offline`` got neither a server URL, an existing local model folder
    nor a vLLM engine (``vllm.LLM`` or ``AsyncLLM``)."""


class OfflineJobError(OutlinesVLLMError, ValueError):
    """An offline job cannot start: bad job spec, unreadable input, or an output file that
    belongs to another input."""


class ManifestError(OutlinesVLLMError, ValueError):
    """The Kubernetes manifests in ``k8s/`` do not build or do not validate; the message says which."""


class RequestFailedError(OutlinesVLLMError):
    """The server (or the embedded engine) answered a request with an error, not a generation.

    ``status_code`` is the HTTP status (None for an embedded engine), ``message`` the server's
    own words, ``retryable`` whether sending the same request again can help (a rate limit or a
    restarting server: yes; a bad schema or a prompt that does not fit: never), and the error's
    text ends with what to do.
    """

    retryable: bool = False
    what = "rejected the request"
    hint = "Fix the request argument named in that message."

    def __init__(
        self,
        status_code: int | None,
        message: str,
        *,
        retryable: bool | None = None,
        source: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.source = source or ("the vLLM engine" if status_code is None else "the vLLM server")
        status = "" if status_code is None else f" (HTTP {status_code})"
        super().__init__(f"{self.source} {self.what}{status}: {message}. {self.hint}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Ray, executors)
        return (_rebuild, (type(self), self.status_code, self.message, self.retryable, self.source))


class BadRequestError(RequestFailedError, ValueError):
    """The server refused the request's arguments (HTTP 400/422); sending it again gives the same."""


class ConstraintRejectedError(BadRequestError):
    """The server refused the output type's constraint: a schema, regex or grammar it cannot
    parse or compile. Deterministic, so never retried (vLLM 0.32 reports a grammar that fails
    to compile inside the engine as HTTP 500; that arrives here too)."""

    what = "rejected the constraint"
    hint = (
        "Fix the output type (schema, regex or grammar) named in that message; the same constraint "
        "fails the same way every time."
    )


class ContextLengthError(BadRequestError):
    """The prompt (plus the requested output) does not fit the model's context window."""

    what = "found the prompt too long for the model's context"
    hint = (
        "Shorten the prompt or lower max_tokens, or serve the model with a larger max_model_len "
        "(--max-model-len)."
    )


class AuthenticationError(RequestFailedError, PermissionError):
    """The server wants an API key (HTTP 401/403) and did not get the right one."""

    what = "refused the API key"
    hint = "Pass the key the server was started with: openai.OpenAI(base_url=..., api_key=KEY)."


class ModelNotFoundError(RequestFailedError, LookupError):
    """The server does not serve the requested model, or has no such endpoint (HTTP 404)."""

    what = "found no such model or endpoint"
    hint = (
        "Pass model_name= one of the served models (GET /v1/models lists them; leave it out when "
        "the server serves one) and check that base_url ends in /v1."
    )


class RateLimitError(RequestFailedError):
    """The server (or a proxy before it) asks the client to slow down (HTTP 429)."""

    retryable = True
    what = "is rate limiting requests"
    hint = "Retry after a pause, or send fewer requests at once (lower max_concurrency)."


class ServerError(RequestFailedError):
    """The server failed while handling a request it accepted (HTTP 5xx)."""

    retryable = True
    what = "failed"
    hint = "Retry; if it keeps failing, read the server's log."


class ServerUnavailableError(ServerError, ConnectionError):
    """The vLLM server cannot be reached, or answers that it is not ready (HTTP 502/503/504)."""

    what = "is unavailable"
    hint = "Start the server or fix base_url, and retry when it is up."


# vLLM 0.32's own wording (vllm/renderers/params.py, vllm/v1/engine/input_processor.py,
# vllm/entrypoints/serve/utils/api_utils.py, vllm/v1/structured_output/backend_*.py).
_CONTEXT = re.compile(r"maximum (context|model) length|context length|max_model_len", re.I)
_CONSTRAINT = re.compile(
    r"structured.?outputs?|grammar|json.?schema|regex|choices|structural.?tag|xgrammar|guidance"
    r"|outlines|lark|look-?around|backreference|nested too deeply|response_format|format.?enforcer",
    re.I,
)
# The body of vLLM's GenerationError: a request the engine finished with finish_reason "error".
# For a constrained request on a text model that is a grammar the engine could not compile.
ENGINE_FAILED_MESSAGE = "Internal server error"


def request_error(status_code: int | None, message: str, *, constrained: bool) -> RequestFailedError:
    """The named error for a server's (or, with ``status_code=None``, an embedded engine's
    rejection of a) failed request, from its HTTP status and vLLM's message.

    ``constrained`` says whether the request carried a constraint: only then can a generic
    engine failure be blamed on the grammar.
    """
    if status_code in (401, 403):
        return AuthenticationError(status_code, message)
    if status_code == 404:
        return ModelNotFoundError(status_code, message)
    if status_code == 429:
        return RateLimitError(status_code, message)
    if status_code in (502, 503, 504):
        return ServerUnavailableError(status_code, message)
    if status_code is not None and status_code >= 500:
        if constrained and (message.strip() == ENGINE_FAILED_MESSAGE or _CONSTRAINT.search(message)):
            return ConstraintRejectedError(
                status_code,
                f"{message} (vLLM reports a grammar it cannot compile this way, and this request "
                "carried a constraint)",
            )
        return ServerError(status_code, message, retryable=status_code != 501)
    if _CONTEXT.search(message):
        return ContextLengthError(status_code, message)
    if _CONSTRAINT.search(message):
        return ConstraintRejectedError(status_code, message)
    return BadRequestError(status_code, message)


def engine_error(error: BaseException, *, constrained: bool) -> RequestFailedError | None:
    """An embedded vLLM engine's exception as the error a server would have answered with, or
    None when it is not a request failure (our own errors, bugs) and must propagate unchanged.

    vLLM raises ``VLLMValidationError`` (a 400 on the server) for a prompt that does not fit or
    a constraint it cannot parse, ``VLLMNotFoundError`` (404) for an unknown LoRA adapter,
    ``VLLMServerError`` (500) when the engine fails, and plain ``ValueError``/``TypeError`` for
    bad sampling parameters; matched by class name, so vLLM is not imported here.
    """
    if isinstance(error, (OutlinesVLLMError, KeyboardInterrupt)):
        return None
    names = {cls.__name__ for cls in type(error).__mro__}
    message = str(error) or type(error).__name__
    if "VLLMNotFoundError" in names:
        return ModelNotFoundError(None, message)
    if "VLLMServerError" in names:
        return ServerError(None, message)
    if names & {"VLLMClientError", "ValueError", "TypeError", "OverflowError"}:
        return request_error(None, message, constrained=constrained)
    return None


def generation_failed(*, constrained: bool, source: str | None = None) -> RequestFailedError:
    """A generation the engine ended with finish_reason "error": for a constrained request on a
    text model, a grammar it could not compile (deterministic); otherwise an engine failure."""
    if constrained:
        return ConstraintRejectedError(
            None,
            'the engine ended the request with finish_reason "error", which is how vLLM reports a '
            "grammar it cannot compile",
            source=source,
        )
    return ServerError(None, 'the engine ended the request with finish_reason "error"', source=source)


def _rebuild(
    cls: type[RequestFailedError], status: int | None, message: str, retryable: bool, source: str
) -> RequestFailedError:
    return cls(status, message, retryable=retryable, source=source)


class CompactJSONWarning(UserWarning):
    """The server refused compact JSON, so the plain schema was sent: JSON may carry whitespace."""


def _preview(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
