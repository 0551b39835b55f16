"""Structured generation on vLLM, on a server or in-process, with typed results and clear errors."""

from .errors import (
    ConstraintRejectedError,
    InvalidSchemaError,
    OutlinesVLLMError,
    OutputValidationError,
    RefusalError,
    ServerUnavailableError,
    TruncatedOutputError,
    UnsupportedOutputTypeError,
    UnsupportedServerError,
)
from .types import CFG, Choice, Constraint, JsonObject, JsonSchema, OutputSpec, Regex, output_spec

__all__ = [
    "CFG",
    "Choice",
    "Constraint",
    "ConstraintRejectedError",
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
    "output_spec",
]
