"""Output-type sources of offline jobs: ``{"schema": ...}``, ``{"regex": ...}``, ``{"choices": [...]}``,
``{"grammar": ...}`` or ``{"json_object": true}``, given for a whole job or per input line, and
the OutputSpec each stands for."""

from __future__ import annotations

import functools
import json
from typing import Any

from ..errors import OfflineJobError, OutlinesVLLMError

# Keys of an input line that give its own output type, and the job options that give one for all.
OUTPUT_KEYS = ("schema", "regex", "choices", "grammar", "json_object")


def check_output_source(source: dict[str, Any], what: str) -> None:
    try:
        output_type_of(json.dumps(source, sort_keys=True))
    except (OutlinesVLLMError, TypeError, ValueError) as exc:
        raise OfflineJobError(f"{what} is invalid: {exc}") from None


@functools.lru_cache(maxsize=1024)
def output_type_of(source_json: str) -> Any:
    """The OutputSpec an output-type source (``{"regex": ...}`` etc., as JSON) stands for."""
    from ..types import CFG, Choice, JsonObject, JsonSchema, Regex, output_spec

    source = json.loads(source_json)
    if source is None:
        return output_spec(None)
    ((key, value),) = source.items()
    if key == "schema":
        return output_spec(JsonSchema(value))
    if key == "regex":
        return output_spec(Regex(_need(value, str, key)))
    if key == "choices":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise OfflineJobError("choices must be a non-empty list of strings")
        return output_spec(Choice(value))
    if key == "grammar":
        return output_spec(CFG(_need(value, str, key)))
    if key == "json_object" and value is True:
        return output_spec(JsonObject)
    raise OfflineJobError(f"unknown output type {key}={value!r}; use one of {', '.join(OUTPUT_KEYS)}")


def _need(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind):
        raise OfflineJobError(f"{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value
