"""Structured generation on vLLM, on a server or in-process, with typed results and clear errors."""

from .errors import (
    ConstraintRejectedError,
    InvalidPromptError,
    InvalidRequestError,
    InvalidSchemaError,
    OfflineJobError,
    OutlinesVLLMError,
    OutputValidationError,
    RefusalError,
    ServerUnavailableError,
    TruncatedOutputError,
    UnsupportedModelError,
    UnsupportedOutputTypeError,
    UnsupportedServerError,
)
from .inputs import Chat
from .models.offline import AsyncVLLMOffline, VLLMOffline, from_vllm_offline
from .models.online import VLLM, AsyncVLLM, from_vllm
from .switch import load
from .types import CFG, Choice, Constraint, JsonObject, JsonSchema, OutputSpec, Regex, output_spec

__all__ = [
    "CFG",
    "VLLM",
    "AsyncVLLM",
    "AsyncVLLMOffline",
    "Chat",
    "Choice",
    "Constraint",
    "ConstraintRejectedError",
    "InvalidPromptError",
    "InvalidRequestError",
    "InvalidSchemaError",
    "JsonObject",
    "JsonSchema",
    "OfflineJobError",
    "OutlinesVLLMError",
    "OutputSpec",
    "OutputValidationError",
    "RefusalError",
    "Regex",
    "ServerUnavailableError",
    "TruncatedOutputError",
    "UnsupportedModelError",
    "UnsupportedOutputTypeError",
    "UnsupportedServerError",
    "VLLMOffline",
    "from_vllm",
    "from_vllm_offline",
    "load",
    "output_spec",
]
