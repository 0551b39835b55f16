"""Judge one generated answer: valid, truncated or invalid, always through ``outlines_vllm.types``.

vLLM's own benchmark calls an answer valid when ``json.loads`` accepts it; here the answer must
pass the request's ``check`` spec (jsonschema for JSON, a full match for regex, membership for
choice) and must not have stopped at the token limit, exactly as the models judge results.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OutputValidationError, TruncatedOutputError
from ..models.base import finish
from ..types import OutputSpec


@dataclass(frozen=True)
class Verdict:
    valid: bool
    truncated: bool = False
    reason: str | None = None


def judge(check: OutputSpec, text: str, finish_reason: str | None) -> Verdict:
    """Whether ``text`` is a complete, valid answer for ``check``."""
    try:
        finish(check, text, finish_reason)
    except TruncatedOutputError:
        return Verdict(False, True, "truncated at max_tokens")
    except OutputValidationError as exc:
        return Verdict(False, False, exc.reason)
    except Exception as exc:  # a validator that cannot run (e.g. an unresolvable $ref) is not a pass
        return Verdict(False, False, f"validator error: {type(exc).__name__}: {exc}")
    return Verdict(True)
