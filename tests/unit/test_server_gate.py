"""The replica's ASGI gate, with a stand-in vLLM app: auth, 413, 4xx, routing, streaming, metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from outlines_vllm import metrics
from outlines_vllm.server.gate import Gate, call

SSE = [
    b'data: {"choices":[{"index":0,"text":"ye"}]}\n\n',
    b'data: {"choices":[{"index":0,"text":"s","finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


class FakeHost:
    """What the gate asks of its replica, with a vLLM app that streams ``SSE`` or echoes the body."""

    model = "a"
    models = ("a", "b")
    replica = "r1"

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.forwarded: list[str] = []
        self.routing: list[dict] = []
        self.dead = False

    async def vllm_app(self, scope: dict, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        self.seen.append(body)
        if b"BOOM" in body:  # what vLLM 0.32 answers when xgrammar fails to compile a schema
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send(
                {
                    "type": "http.response.body",
                    "body": b'{"error": {"message": "Check failed: per_rule_fsm_hashes"}}',
                }
            )
            return
        if json.loads(body).get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for chunk in SSE:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            reply = {
                "choices": [{"index": 0, "text": "yes", "finish_reason": "stop"}],
                "usage": {"completion_tokens": 1},
            }
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": json.dumps(reply).encode()})

    def unavailable(self) -> str | None:
        return "dead; retry" if self.dead else None

    async def forward(self, info: Any, scope: dict, send: Any) -> None:
        self.forwarded.append(info.model)
        self.routing.append(info.routing)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def all_model_cards(self) -> list[dict]:
        return [{"id": m} for m in self.models]

    async def app_health(self) -> tuple[int, dict]:
        return 200, {"status": "ok", "replicas": {"a": 1, "b": 1}}

    async def app_metrics(self) -> bytes:
        return b"# metrics\n"


def request(
    gate: Gate, path: str, body: Any = None, *, key: str | None = "k", method: str = "POST"
) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}

    async def run() -> tuple[int, bytes]:
        status, chunks = 0, []
        async for message in call(gate, scope, raw):
            if message["type"] == "http.response.start":
                status = message["status"]
                gate.last_headers = dict(message.get("headers", ()))  # type: ignore[attr-defined]
            else:
                chunks.append(message.get("body", b""))
        return status, b"".join(chunks)

    return asyncio.run(run())


def chat(**fields: Any) -> dict:
    return {"model": "a", "messages": [{"role": "user", "content": "hi"}], **fields}


def count(**labels: str) -> float:
    return sum(
        s.value
        for m in metrics.REGISTRY.collect()
        if m.name == "outlines_vllm_requests"
        for s in m.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_api_key_body_limit_and_bad_requests_are_answered_by_the_gate() -> None:
    host = FakeHost()
    gate = Gate(host, "k", 1024)
    assert request(gate, "/v1/chat/completions", chat(), key=None)[0] == 401
    assert request(gate, "/v1/chat/completions", chat(), key="wrong")[0] == 401
    assert request(gate, "/v1/models", method="GET", key=None)[0] == 401
    status, body = request(
        gate, "/v1/chat/completions", chat(messages=[{"role": "user", "content": "x" * 2000}])
    )
    assert status == 413 and b"limit" in body
    deep = Gate(host, "k", 1 << 20)  # a JSON body nested thousands deep: 400, not a crash
    status, body = request(deep, "/v1/chat/completions", b'{"a":' * 20000 + b"1" + b"}" * 20000)
    assert status == 400 and b"nested" in body
    assert request(gate, "/v1/chat/completions", chat(model="zzz"))[0] == 404
    assert request(gate, "/tokenize", {"prompt": "x"})[0] == 404  # vLLM's other routes stay inside
    assert host.seen == []  # none of that reached the engine


def test_requests_are_served_here_or_forwarded_to_their_models_replica() -> None:
    host = FakeHost()
    gate = Gate(host, None, 1 << 20)
    before = count(model="a", constraint="choice", status="200")
    status, body = request(
        gate,
        "/v1/completions",
        {"model": "a", "prompt": "x", "structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert status == 200 and json.loads(body)["choices"][0]["text"] == "yes"
    assert count(model="a", constraint="choice", status="200") == before + 1
    assert request(gate, "/v1/completions", {"model": "b", "prompt": "x"})[0] == 200
    assert host.forwarded == ["b"] and len(host.seen) == 1
    assert host.routing == [{"prompt": "x"}]  # what the other model's request router reads
    request(gate, "/v1/completions", {"model": "a", "prompt": "x"})
    assert gate.last_headers[b"x-outlines-replica"] == b"r1"  # which replica answered
    status, body = request(gate, "/v1/completions", {"model": "a", "prompt": "x", "stream": True})
    assert status == 200 and body == b"".join(SSE)
    assert json.loads(request(gate, "/v1/models", method="GET")[1])["data"] == [{"id": "a"}, {"id": "b"}]
    assert request(gate, "/health", method="GET")[0] == 200


def test_a_dead_engine_gets_503_which_clients_retry() -> None:
    host = FakeHost()
    host.dead = True
    status, body = request(Gate(host, None, 1 << 20), "/v1/completions", {"model": "a", "prompt": "x"})
    assert status == 503 and b"retry" in body and host.seen == []


def test_a_constraint_the_engine_cannot_compile_is_a_400_naming_it_while_the_engine_is_healthy() -> None:
    host = FakeHost()
    gate = Gate(host, None, 1 << 20)
    body = {"model": "a", "prompt": "x", "structured_outputs": {"json": {"type": "object", "title": "BOOM"}}}
    status, reply = request(gate, "/v1/completions", body)
    message = json.loads(reply)["error"]["message"]
    assert status == 400 and "json constraint" in message and "per_rule_fsm_hashes" in message
    host.dead = False
    unconstrained = request(gate, "/v1/completions", {"model": "a", "prompt": "BOOM"})
    assert unconstrained[0] == 500  # not the client's fault: stays a 5xx


def test_the_constraint_header_is_found_whatever_case_the_client_wrote():
    from outlines_vllm.server.gate import _header
    from outlines_vllm.types import CONSTRAINT_HEADER

    scope = {"headers": [(b"x-outlines-constraint", b"json")]}  # ASGI lower-cases header names
    assert _header(scope, CONSTRAINT_HEADER.encode()) == "json"
    assert _header(scope, b"authorization") == ""
