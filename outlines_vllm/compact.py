"""Compact JSON: the ``structured_outputs`` fields that keep generated JSON free of padding.

Free whitespace costs: under a schema the default model pads JSON with runs of spaces and
newlines, about 2.7x the tokens of compact JSON, and a small ``max_tokens`` then ends in
truncated, invalid JSON (docs/compact-json.md). vLLM 0.32 makes JSON compact only through an
engine-wide setting (``structured_outputs_config.disable_any_whitespace``), which this project
sets on every engine and server it starts (``launch.STRUCTURED_OUTPUTS_CONFIG``). The fields
are built here without torch, in one of two forms:

1. **The schema itself** with ``disable_any_whitespace`` and llguidance's ``x-guidance``
   whitespace options, when the engine is known to be compact itself (``engine_compact``: an
   embedded engine's config, or a server's ``/version``, see ``engine_info.py``), and otherwise
   for schemas a regex cannot state exactly. Unbounded integers get the bounds
   ``±(10**16 - 1)``, so their digits stop where a float64 does. Compact on engines with
   ``disable_any_whitespace`` (ours), on the guidance backend (it reads ``x-guidance`` per
   request) and on any vLLM that honours the request field; free whitespace elsewhere.
2. **A regex** (``outlines_core``, a small Rust wheel, the library vLLM's outlines backend
   uses) on any other server, when the schema uses only keywords that regex expresses exactly
   and is not recursive. Every backend (xgrammar, guidance, outlines) takes a regex, so this is
   compact on any vLLM server; but xgrammar computes its masks about 400x slower than for
   the schema (21 ms against 0.05 ms per token, docs/compact-json.md), hence form 1 wherever
   the engine allows it.

A server that refuses the compact form (HTTP 400) gets the plain schema instead, with a
warning (``fallback_fields``); the constraint kind stays ``json`` throughout (metrics,
reports and the ``X-Outlines-Constraint`` header).
"""

from __future__ import annotations

import functools
import json
from typing import Any

# Numbers without bounds in outlines_core's regex -> at most 16 digits before the point, 16 after
# it and 3 in an exponent (what a float64 holds). The default model otherwise repeats digits
# until max_tokens ("age": 1111111...).
_INTEGER = r"(-)?(0|[1-9][0-9]*)"
_BOUNDED_INTEGER = r"(-)?(0|[1-9][0-9]{0,15})"
_FRACTION, _BOUNDED_FRACTION = r"(\.[0-9]+)?", r"(\.[0-9]{1,16})?"
_EXPONENT, _BOUNDED_EXPONENT = r"([eE][+-][0-9]+)?", r"([eE][+-]?[0-9]{1,3})?"  # JSON: the sign is optional

# Keywords outlines_core turns into an exact regex. A schema with any other keyword (numeric
# bounds, additionalProperties schemas, patternProperties, uniqueItems, not, if/then, ...) would
# be loosened silently, so it takes the schema route instead.
_EXACT_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "items", "prefixItems", "minItems", "maxItems",
        "minLength", "maxLength", "pattern", "enum", "const", "anyOf", "oneOf", "$ref", "$defs",
        "definitions", "title", "description", "default", "examples", "$schema", "$id",
        "$comment", "deprecated", "readOnly", "writeOnly",
    }
)  # fmt: skip
_EXACT_FORMATS = frozenset({"date-time", "date", "time", "uuid", "email", "uri"})
# Keys whose values are maps of names to schemas (or arbitrary data), not schemas themselves.
_NAME_MAPS = ("properties", "$defs", "definitions")
_DATA = ("enum", "const", "default", "examples", "required", "title", "description", "$comment")
# Beyond this size a regex costs more to send and compile than the schema it replaces.
MAX_REGEX_CHARS = 32_000
# llguidance's per-schema options (the guidance backend reads them from the request's schema).
_GUIDANCE_COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def compact_fields(
    schema: dict[str, Any], whitespace_pattern: str | None = None, *, engine_compact: bool = False
) -> dict[str, Any]:
    """The ``structured_outputs`` fields for ``schema`` with no free whitespace (or only
    ``whitespace_pattern``, a regex fragment such as ``[ ]?``, between JSON tokens).
    ``engine_compact``: the engine drops free whitespace itself, so the schema form is compact."""
    key = json.dumps(schema, sort_keys=False)
    return json.loads(_compact_fields_cached(key, whitespace_pattern, engine_compact))


def fallback_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """The plain schema: what a server that refuses the compact form takes."""
    return {"json": schema}


@functools.lru_cache(maxsize=512)
def _compact_fields_cached(schema_json: str, whitespace_pattern: str | None, engine_compact: bool) -> str:
    schema = json.loads(schema_json)
    regex = (
        None
        if engine_compact and whitespace_pattern is None
        else json_regex(schema, whitespace_pattern or "")
    )
    if regex is not None:
        return json.dumps({"regex": regex})
    if whitespace_pattern is not None:
        from .errors import InvalidSchemaError

        raise InvalidSchemaError(
            "whitespace_pattern works for schemas a regex expresses exactly (no numeric bounds, "
            "additionalProperties schemas or recursion); this schema has other keywords. Drop "
            "whitespace_pattern (JSON stays compact) or simplify the schema."
        )
    hinted = {**_bound_integers(schema), "x-guidance": _GUIDANCE_COMPACT}
    return json.dumps({"json": hinted, "disable_any_whitespace": True})


def json_regex(schema: dict[str, Any], whitespace_pattern: str = "") -> str | None:
    """A regex whose language is exactly the compact JSON instances of ``schema`` (in property
    order), or None when a regex would loosen or truncate the schema."""
    ranges: list[str] = []
    schema = _integer_ranges(schema, ranges)
    if not _exact(schema, schema) or _recursive(schema):
        return None
    from outlines_core.json_schema import build_regex_from_schema

    try:
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern)
    except (ValueError, TypeError, RuntimeError):  # a construct outlines_core does not handle
        return None
    regex = (
        regex.replace(_INTEGER, _BOUNDED_INTEGER)
        .replace(_FRACTION, _BOUNDED_FRACTION)
        .replace(_EXPONENT, _BOUNDED_EXPONENT)
    )
    for i, pattern in enumerate(ranges):
        regex = regex.replace(f'"{_placeholder(i)}"', f"({pattern})")
    return regex if len(regex) <= MAX_REGEX_CHARS else None


# --- integers with bounds: outlines_core ignores minimum/maximum, so they are written here -------

_INTEGER_KEYS = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated"}
_LARGEST = 10**16 - 1  # the digit bound of every integer


def _bound_integers(node: Any) -> Any:
    """A copy of ``node`` in which every integer without a bound on a side gets ``±_LARGEST``
    (xgrammar and guidance enforce integer ranges; the regex form caps digits the same way)."""
    if isinstance(node, list):
        return [_bound_integers(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: value if key in _DATA else _bound_integers(value) for key, value in node.items()}
    types = node.get("type")
    integer = types == "integer" or (isinstance(types, list) and "integer" in types and "number" not in types)
    draft4 = any(isinstance(node.get(key), bool) for key in ("exclusiveMinimum", "exclusiveMaximum"))
    if integer and not draft4:
        if not node.keys() & {"minimum", "exclusiveMinimum"}:
            out["minimum"] = -_LARGEST
        if not node.keys() & {"maximum", "exclusiveMaximum"}:
            out["maximum"] = _LARGEST
    return out


def _placeholder(i: int) -> str:
    return f"outlinesvllmintegerrange{i}"  # letters and digits: outlines_core escapes nothing


def _integer_ranges(node: Any, ranges: list[str]) -> Any:
    """A copy of ``node`` in which every bounded integer is a placeholder constant; the range's
    regex is appended to ``ranges`` (outlines_core writes the constant as a quoted literal)."""
    if isinstance(node, list):
        return [_integer_ranges(item, ranges) for item in node]
    if not isinstance(node, dict):
        return node
    bounds = node.keys() & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
    if node.get("type") == "integer" and bounds and node.keys() <= _INTEGER_KEYS | _ANNOTATIONS:
        pattern = _bounded_integer(node)
        if pattern is None:
            return node  # unsatisfiable or draft-4 style bounds: left for _exact to refuse
        ranges.append(pattern)
        return {"const": _placeholder(len(ranges) - 1)}
    return {key: value if key in _DATA else _integer_ranges(value, ranges) for key, value in node.items()}


def _bounded_integer(node: dict[str, Any]) -> str | None:
    """The regex of the integers ``node`` allows, within 16 digits."""
    import math

    lo, hi = -_LARGEST, _LARGEST
    for key, value in node.items():
        if isinstance(value, bool) or (
            key in _INTEGER_KEYS - {"type"} and not isinstance(value, int | float)
        ):
            return None
        if key == "minimum":
            lo = max(lo, math.ceil(value))
        elif key == "exclusiveMinimum":
            lo = max(lo, math.floor(value) + 1)
        elif key == "maximum":
            hi = min(hi, math.floor(value))
        elif key == "exclusiveMaximum":
            hi = min(hi, math.ceil(value) - 1)
    if lo > hi:
        return None
    parts = []
    if lo < 0:
        parts += ["-" + p for p in _natural_range(max(-hi, 1), -lo)]
    if hi >= 0:
        parts += _natural_range(max(lo, 0), hi)
    return "|".join(parts)


def _natural_range(lo: int, hi: int) -> list[str]:
    """Regexes for the natural numbers ``lo..hi`` (no leading zeros), one per run of numbers of
    equal length and shape (the to-regex-range construction)."""
    stops = {hi}
    for k in range(1, len(str(hi)) + 1):  # runs ending in 9, 99, ...
        stop = int(str(lo)[:-k] + "9" * k) if len(str(lo)) > k else int("9" * k)
        if lo <= stop < hi:
            stops.add(stop)
    for k in range(1, len(str(hi)) + 1):  # runs starting at ...0, ...00
        stop = (hi + 1) - (hi + 1) % 10**k - 1
        if lo < stop <= hi:
            stops.add(stop)
    patterns, start = [], lo
    for stop in sorted(stops):
        patterns.append(_run(start, stop))
        start = stop + 1
    return patterns


def _run(start: int, stop: int) -> str:
    pattern, free = "", 0
    for a, b in zip(str(start), str(stop), strict=False):
        if a == b:
            pattern += a
        elif a != "0" or b != "9":
            pattern += f"[{a}-{b}]"
        else:
            free += 1
    return pattern + ("[0-9]" + (f"{{{free}}}" if free > 1 else "") if free else "")


def _exact(node: Any, root: dict[str, Any]) -> bool:
    """Whether every keyword in ``node`` (recursively) is one a regex expresses exactly."""
    if not isinstance(node, dict):  # true/false schemas: any value, or none
        return False
    if not node.keys() & {"type", "enum", "const", "$ref", "anyOf", "oneOf", "properties", "items"}:
        return False  # any value: a regex could only cut its depth
    if node.get("type") == "object" and "properties" not in node:
        return False
    if node.get("type") == "array" and not node.keys() & {"items", "prefixItems"}:
        return False
    if node.keys() & {"pattern", "format"} and node.keys() & {"minLength", "maxLength"}:
        return False  # outlines_core then keeps the length and drops the pattern or format
    for key, value in node.items():
        if key not in _EXACT_KEYWORDS:
            if key == "format" and value in _EXACT_FORMATS:
                continue
            if key == "additionalProperties" and value is False:
                continue
            return False
        if key in _DATA:
            continue
        if key in _NAME_MAPS:
            if not isinstance(value, dict) or not all(_exact(v, root) for v in value.values()):
                return False
        elif key in ("items", "anyOf", "oneOf", "prefixItems"):
            children = value if isinstance(value, list) else [value]
            if not all(_exact(child, root) for child in children):
                return False
    return True


def _recursive(schema: dict[str, Any]) -> bool:
    """Whether a ``$ref`` leads back to a schema it sits in (a regex can only cut that off),
    or points outside the document (not provably finite)."""

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    def target(ref: str) -> Any:
        node: Any = schema
        for part in filter(None, ref[1:].split("/")):
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        return node

    def cycles(ref: str, path: frozenset[str]) -> bool:
        if not ref.startswith("#") or ref.rstrip("/") == "#" or ref in path:
            return True
        return any(cycles(inner, path | {ref}) for inner in refs(target(ref)))

    top = {key: value for key, value in schema.items() if key not in ("$defs", "definitions")}
    return any(cycles(ref, frozenset()) for ref in refs(top))
