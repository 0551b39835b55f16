"""What a model learns of its engine's JSON whitespace, and how our servers say it."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from outlines_vllm.engine_info import EngineInfoMiddleware, engine_compact, offline_engine_compact


def vllm_config(backend: str, disable_any_whitespace: bool) -> SimpleNamespace:
    return SimpleNamespace(
        structured_outputs_config=SimpleNamespace(
            backend=backend, disable_any_whitespace=disable_any_whitespace
        )
    )


@pytest.mark.parametrize(
    ("settings", "compact"),
    [
        ({"backend": "xgrammar", "disable_any_whitespace": True}, True),
        ({"backend": "guidance", "disable_any_whitespace": True}, True),
        ({"backend": "outlines", "disable_any_whitespace": True}, False),  # outlines ignores it
        ({"backend": "xgrammar", "disable_any_whitespace": False}, False),
        ({"backend": "xgrammar", "disable_any_whitespace": "yes"}, False),
        ({}, False),
        (None, False),
        ("xgrammar", False),
    ],
)
def test_only_xgrammar_or_guidance_with_disable_any_whitespace_is_compact(settings, compact):
    assert engine_compact(settings) is compact


def test_embedded_engines_are_read_from_their_config():
    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=vllm_config("xgrammar", True)))
    async_llm = SimpleNamespace(vllm_config=vllm_config("auto", False))
    assert offline_engine_compact(llm) is True
    assert offline_engine_compact(async_llm) is False


def run(middleware: EngineInfoMiddleware, path: str, method: str = "GET") -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    app = SimpleNamespace(state=SimpleNamespace(vllm_config=vllm_config("xgrammar", True)))
    scope = {"type": "http", "path": path, "method": method, "app": app}
    asyncio.run(middleware(scope, receive, send))
    return sent


def test_the_middleware_answers_version_with_the_engine_settings_and_passes_the_rest():
    passed: list[str] = []

    async def inner(scope, receive, send):
        passed.append(scope["path"])

    middleware = EngineInfoMiddleware(inner)
    start, body = run(middleware, "/version")
    info = json.loads(body["body"])
    assert start["status"] == 200
    assert info["structured_outputs"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert info["version"].startswith("0.")
    assert passed == []
    assert run(middleware, "/v1/chat/completions", "POST") == [] and run(middleware, "/version", "POST") == []
    assert passed == ["/v1/chat/completions", "/version"]
