"""Named errors. Each says what went wrong and what to do; none hides generated text.

Every error that carries generated output keeps it on ``.text`` so nothing is lost.
"""

from __future__ import annotations


class OutlinesVLLMError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedOutputTypeError(OutlinesVLLMError, TypeError):
    """The output type cannot be turned into a vLLM constraint."""


class InvalidSchemaError(OutlinesVLLMError, ValueError):
    """A JSON schema, regex or grammar is malformed before it ever reaches vLLM."""


class TruncatedOutputError(OutlinesVLLMError):
    """Generation stopped at the token limit, so the constrained output is incomplete."""

    def __init__(self, text: str, max_tokens: int | None = None) -> None:
        self.text = text
        self.max_tokens = max_tokens
        limit = f"max_tokens={max_tokens}" if max_tokens else "the token limit"
        super().__init__(
            f"output was cut off by {limit} after {len(text)} characters, so it is not a complete "
            "value; raise max_tokens or keep compact JSON on (the default). Text: " + _preview(text)
        )


class OutputValidationError(OutlinesVLLMError, ValueError):
    """The generated text does not parse or validate as the requested type."""

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


class ConstraintRejectedError(OutlinesVLLMError, ValueError):
    """The server rejected the request (HTTP 4xx), usually an invalid schema, regex or grammar."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message
        super().__init__(
            f"the vLLM server rejected the request (HTTP {status_code}): {message}. "
            "Fix the output type or request arguments named in that message."
        )


class InvalidRequestError(OutlinesVLLMError, ValueError):
    """The call's arguments cannot be honoured together (e.g. two constraints, chat input on
    the completions endpoint, streaming with ``n > 1``)."""


class ServerUnavailableError(OutlinesVLLMError, ConnectionError):
    """The vLLM server cannot be reached."""


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


class CompactJSONWarning(UserWarning):
    """The server refused compact JSON, so the plain schema was sent: JSON may carry whitespace."""


def _preview(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
