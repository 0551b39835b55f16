"""The ASGI front of an engine replica: auth, size limit, validation, routing by ``model``, metrics.

Every engine replica serves HTTP itself (Serve's proxy hands it the request: one hop), through
this gate and then vLLM's own OpenAI app, in-process. The gate is plain ASGI, not a framework
layer, so a streamed token costs one ``send`` wrapper on top of vLLM's own path.

- ``/v1/chat/completions`` and ``/v1/completions``: API key (401), body limit (413), validation
  (4xx with the reason, ``validation.py``); then this replica's vLLM app when the body names this
  replica's model, else the replica of the named model (a Serve handle; only multi-model apps).
  The body reaches vLLM byte for byte (the model is filled in when omitted).
- ``/v1/models`` lists every served model; ``/version`` is vLLM's plus the engine's
  structured-output settings (``engine_info.py``: clients pick the faster JSON form);
  ``/health`` and ``/metrics`` (every replica's metrics, through the hub) are open for probes
  and Prometheus.
- Anything else is 404: vLLM's other routes (tokenize, admin, ...) stay inside.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from ..engine_info import version_body
from ..types import CONSTRAINT_HEADER, REPLICA_HEADER
from .observe import Observation
from .validation import CHAT, COMPLETIONS, BadRequest, inspect_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]
GENERATE = (CHAT, COMPLETIONS)


def error_body(message: str, status: int, error_type: str = "server_error") -> bytes:
    """The OpenAI error shape, which the openai SDK reads into its exception message."""
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    ).encode()


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI app of one replica. ``host`` is the replica (see ``replica.EngineReplica``): it gives
    the vLLM app, the model names, the other models' handles and the health/metrics views."""

    def __init__(self, host: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.host = host
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # the engine's life is the replica's, not the ASGI server's
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        if path in GENERATE and method == "POST":
            await self.generate(scope, receive, send, path)
        elif path == "/v1/models" and method == "GET":
            if not await self.authorized(scope, send):
                return
            data = await self.host.all_model_cards()
            await respond(send, 200, json.dumps({"object": "list", "data": data}).encode())
        elif path == "/version" and method == "GET":  # vLLM's, plus the engine's JSON settings
            await respond(send, 200, version_body(self.host.vllm_app.state.vllm_config))
        elif path == "/health" and method in ("GET", "HEAD"):
            status, body = await self.host.app_health()
            await respond(send, status, json.dumps(body).encode())
        elif path == "/metrics" and method == "GET":
            await respond(
                send, 200, await self.host.app_metrics(), [(b"content-type", b"text/plain; version=0.0.4")]
            )
        else:
            await respond(
                send, 404, error_body(f"{method} {path} is not served here", 404, "not_found_error")
            )

    async def authorized(self, scope: Scope, send: Send) -> bool:
        if not self.api_key:
            return True
        given = _header(scope, b"authorization")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), self.api_key.encode()):
            return True
        message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
        headers = [*JSON_HEADERS, (b"www-authenticate", b"Bearer")]
        await respond(send, 401, error_body(message, 401, "authentication_error"), headers)
        return False

    async def generate(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        observation = Observation(endpoint)
        if not await self.authorized(scope, send):
            observation.record(401)
            return
        try:
            raw = await self.read_body(scope, receive)
            info = inspect_request(
                raw, endpoint, self.host.models, _header(scope, CONSTRAINT_HEADER.encode())
            )
        except BadRequest as exc:
            observation.record(exc.status)
            await respond(send, exc.status, json.dumps(exc.body()).encode())
            return
        if info.model != self.host.model:  # another model's deployment serves and counts it
            await self.host.forward(info, scope, send)
            return
        observation.routed(info)
        observation.replica = self.host.replica
        if reason := self.host.unavailable():  # a dead engine: 503, which clients retry
            observation.record(503)
            await respond(send, 503, error_body(reason, 503))
            return
        sent = False

        async def body_once() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: vLLM waits here for a disconnect
            sent = True
            return {"type": "http.request", "body": info.body, "more_body": False}

        status = 500
        replica_header = (REPLICA_HEADER.encode(), self.host.replica.encode())
        whole: list[bytes] = []
        failed: list[bytes] = []  # a constrained request's 5xx body, held back (see below)

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 500 and info.kind != "none":
                    return  # sent (as a 4xx if the engine is fine) once the body is in
                message = {**message, "headers": [*message.get("headers", ()), replica_header]}
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if failed or (status >= 500 and info.kind != "none"):
                    failed.append(chunk)
                    if not message.get("more_body"):
                        status = await self.constraint_failed(send, status, b"".join(failed), info.kind)
                    return
                if status == 200:
                    if info.stream:
                        observation.sse(chunk)
                    else:
                        whole.append(chunk)
            await send(message)

        scope = dict(scope)
        if info.body is not raw:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        try:
            await self.host.vllm_app(scope, body_once, observe)
        finally:
            if whole:
                observation.response(b"".join(whole))
            observation.record(status)

    async def constraint_failed(self, send: Send, status: int, body: bytes, kind: str) -> int:
        """vLLM answered a constrained request with a 5xx. When the engine is still healthy the
        failure was this request's constraint (e.g. xgrammar cannot compile a schema): that is
        the client's to fix, so it becomes a 400 naming the constraint. Returns the status sent."""
        if self.host.unavailable():
            await respond(send, status, body)
            return status
        try:
            detail = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = body.decode(errors="replace")[:500]
        message = (
            f"the engine could not use this request's {kind} constraint ({detail}); simplify the "
            "schema, regex or grammar (or send it as another constraint kind)"
        )
        await respond(send, 400, json.dumps(BadRequest(400, message, "structured_outputs").body()).encode())
        return 400

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        too_big = BadRequest(413, f"request body is larger than the server's limit of {limit} bytes")
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str:
    """A request header's value ("" when absent); ASGI gives header names in lower case."""
    name = name.lower()
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


async def call(app: ASGIApp, scope: Scope, body: bytes) -> AsyncIterator[Message]:
    """Run ``app`` on one buffered request and yield its ASGI response messages as they come
    (how a replica serves a request another model's replica forwarded through a handle)."""
    import asyncio

    queue: asyncio.Queue[Message | None] = asyncio.Queue()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never disconnects: cancelled with the task
        raise AssertionError

    async def run() -> None:
        try:
            await app(scope, receive, queue.put)
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    try:
        while (message := await queue.get()) is not None:
            yield message
        await task
    finally:
        task.cancel()
