"""Structured generation on vLLM, on a server or in-process, with typed results and clear errors."""

from .errors import (
    ConstraintRejectedError,
    InvalidRequestError,
    InvalidSchemaError,
    OutlinesVLLMError,
    OutputValidationError,
    RefusalError,
    ServerUnavailableError,
    TruncatedOutputError,
    UnsupportedOutputTypeError,
    UnsupportedServerError,
)
from .inputs import Chat
from .models.online import VLLM, AsyncVLLM, from_vllm
from .types import CFG, Choice, Constraint, JsonObject, JsonSchema, OutputSpec, Regex, output_spec

__all__ = [
    "CFG",
    "VLLM",
    "AsyncVLLM",
    "Chat",
    "Choice",
    "Constraint",
    "ConstraintRejectedError",
    "InvalidRequestError",
    "InvalidSchemaError",
    "JsonObject",
    "JsonSchema",
    "OutlinesVLLMError",
    "OutputSpec",
    "OutputValidationError",
    "RefusalError",
    "Regex",
    "ServerUnavailableError",
    "TruncatedOutputError",
    "UnsupportedOutputTypeError",
    "UnsupportedServerError",
    "from_vllm",
    "output_spec",
]
