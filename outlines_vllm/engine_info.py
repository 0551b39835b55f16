"""Whether the engine behind a model keeps JSON compact itself, learnt once per model.

The fastest compact-JSON form depends on the engine (``compact.py``). An engine started with
``disable_any_whitespace`` on the xgrammar or guidance backend (every engine this project
starts) makes the plain schema compact, and xgrammar computes that mask about 400x faster than
the exact regex that a server of unknown settings must be sent. An embedded engine's config says
so directly. A server says so on ``/version``, which this project's servers extend with the
engine's structured-output settings: the Ray app's gate, and :class:`EngineInfoMiddleware` on
a plain ``vllm serve --middleware outlines_vllm.engine_info.EngineInfoMiddleware``. A server
that does not say (vLLM's own ``/version``) gets the regex, compact on every backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# The backends that take vLLM's engine-wide ``disable_any_whitespace`` ("auto" refuses it).
COMPACT_BACKENDS = frozenset({"xgrammar", "guidance"})
# The import path to pass to ``vllm serve --middleware``.
MIDDLEWARE = f"{__name__}.EngineInfoMiddleware"


def structured_outputs_settings(vllm_config: Any) -> dict[str, Any]:
    """The settings a client needs from an engine's ``VllmConfig``."""
    config = vllm_config.structured_outputs_config
    return {"backend": config.backend, "disable_any_whitespace": bool(config.disable_any_whitespace)}


def engine_compact(settings: Mapping[str, Any] | None) -> bool:
    """Whether an engine with these settings (None: unknown) emits JSON without free whitespace
    for a plain schema."""
    if not isinstance(settings, Mapping):
        return False
    return settings.get("disable_any_whitespace") is True and settings.get("backend") in COMPACT_BACKENDS


def offline_vllm_config(engine: Any) -> Any:
    """The ``VllmConfig`` of an embedded ``vllm.LLM`` or async engine."""
    return getattr(engine, "vllm_config", None) or engine.llm_engine.vllm_config


def offline_engine_compact(engine: Any) -> bool:
    """``engine_compact`` of an embedded ``vllm.LLM`` or async engine."""
    return engine_compact(structured_outputs_settings(offline_vllm_config(engine)))


def version_body(vllm_config: Any) -> bytes:
    """The ``/version`` answer of our servers: vLLM's fields plus the structured-output settings."""
    from vllm import __version__

    return json.dumps(
        {"version": __version__, "structured_outputs": structured_outputs_settings(vllm_config)}
    ).encode()


class EngineInfoMiddleware:
    """ASGI middleware for vLLM's OpenAI server that answers ``GET /version`` with
    :func:`version_body`. Every other request passes straight through (one path comparison)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/version" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        body = version_body(scope["app"].state.vllm_config)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
