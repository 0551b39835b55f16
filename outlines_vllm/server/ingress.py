"""The OpenAI-compatible ingress: auth, size limit, validation, routing by ``model``, metrics.

``/v1/chat/completions`` and ``/v1/completions`` (streaming too) go to a replica of the model the
body names; the body is forwarded byte for byte, so structured-output fields reach vLLM exactly
as the client wrote them. ``/v1/models`` lists every served model; ``/version`` is vLLM's.
``/health`` and ``/metrics`` stay open (no API key) for probes and Prometheus.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from ..metrics import REGISTRY
from ..types import CONSTRAINT_HEADER
from .config import AppConfig
from .exposition import merge
from .observe import Observation
from .replica import JSON, Reply, error_body
from .validation import CHAT, COMPLETIONS, BadRequest, inspect_request

logger = logging.getLogger("ray.serve")
app = FastAPI(title="outlines-vllm", docs_url=None, redoc_url=None, openapi_url=None)  # no open extras
RETRYABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)


class Ingress:
    """Serve replica class of the ingress (``app.build_app`` wraps it with ``serve.ingress(app)``)."""

    async def __init__(
        self, engines: dict[str, DeploymentHandle], hub: DeploymentHandle, config: AppConfig
    ) -> None:
        disable_created_metrics()
        self.engines = engines
        self.hub = hub
        self.config = config
        self.api_key = config.resolved_api_key()
        self.id = serve.get_replica_context().replica_id.unique_id
        self.models_cache: list[dict[str, Any]] | None = None
        self.publisher = asyncio.create_task(self._publish_forever(config.metrics_push_period_s))

    @app.post(CHAT)
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, CHAT)

    @app.post(COMPLETIONS)
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, COMPLETIONS)

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        if denied := self._unauthorized(request):
            return denied
        if self.models_cache is None:
            replies = {
                name: await self._call(h, "GET", "/v1/models", None) for name, h in self.engines.items()
            }
            data = [
                entry
                for name, reply in replies.items()
                for entry in (json.loads(reply.body)["data"] if reply.status == 200 else [_listing(name)])
            ]
            if all(reply.status == 200 for reply in replies.values()):
                self.models_cache = data  # engines' model cards do not change while they run
            return JSONResponse({"object": "list", "data": data})
        return JSONResponse({"object": "list", "data": self.models_cache})

    @app.get("/version")
    async def version(self) -> Response:
        reply = await self._call(next(iter(self.engines.values())), "GET", "/version", None)
        return Response(reply.body, reply.status, media_type=reply.content_type)

    @app.get("/health")
    async def health(self) -> Response:
        """200 while every model has a healthy replica; 503 names the models that have none."""
        try:
            replicas = await asyncio.wait_for(self.hub.replicas.remote(), 5)
        except Exception as exc:
            return JSONResponse({"status": f"replica state unavailable: {exc!r}"}, 503)
        up = {name: 0 for name in self.engines}
        for info in replicas.values():
            if info.get("up") and info.get("model") in up:
                up[info["model"]] += 1
        missing = sorted(name for name, count in up.items() if not count)
        status = f"no healthy replica for {missing}" if missing else "ok"
        return JSONResponse({"status": status, "replicas": up}, 503 if missing else 200)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """This ingress's metrics, the other ingress replicas', and every engine replica's."""
        try:
            sources = await asyncio.wait_for(self.hub.snapshot.remote(), 5)
        except Exception as exc:
            logger.warning("ingress %s: metrics hub unavailable: %r", self.id, exc)
            sources = {}
        sources[self.id] = (generate_latest(REGISTRY).decode(), {"ingress": self.id})
        return Response(merge(sources.values()), media_type=CONTENT_TYPE_LATEST)

    async def _generate(self, request: Request, endpoint: str) -> Response:
        observation = Observation(endpoint)
        try:
            if denied := self._unauthorized(request):
                observation.record(denied.status_code)
                return denied
            raw = await self._read_body(request)
            info = inspect_request(raw, endpoint, self.engines, request.headers.get(CONSTRAINT_HEADER))
        except BadRequest as exc:
            observation.record(exc.status)
            return JSONResponse(exc.body(), exc.status)
        observation.routed(info)
        handle = self.engines[info.model]
        try:
            if info.stream:
                return await self._stream(handle, endpoint, info.body, observation)
            reply = await self._call(handle, "POST", endpoint, info.body)
        except asyncio.CancelledError:  # the client went away
            observation.record(499)
            raise
        except Exception as exc:  # a replica failed in a way Serve could not retry
            logger.exception("ingress %s: %s failed", self.id, endpoint)
            observation.record(502)
            return Response(error_body(f"the replica failed: {exc!r}; retry", 502), 502, media_type=JSON)
        observation.replica = reply.replica
        if reply.status == 200:
            observation.response(reply.body)
        observation.record(reply.status)
        return Response(reply.body, reply.status, media_type=reply.content_type)

    async def _call(self, handle: DeploymentHandle, method: str, path: str, body: bytes | None) -> Reply:
        """One request to some replica, re-routed while replicas could not take it at all."""
        for attempt in range(self.config.route_retries + 1):
            try:
                reply = await handle.forward.remote(method, path, body)
            except RETRYABLE as exc:
                reply = _unavailable(exc)
            if not reply.retry:
                return reply
            await asyncio.sleep(0.1 * (attempt + 1))
        return reply

    async def _stream(
        self, handle: DeploymentHandle, path: str, body: bytes, observation: Observation
    ) -> Response:
        for attempt in range(self.config.route_retries + 1):
            chunks = handle.options(stream=True).stream.remote(path, body)
            try:
                head = await chunks.__anext__()
            except RETRYABLE as exc:
                head = _unavailable(exc)
            if not head.retry:
                break
            chunks.cancel()
            await asyncio.sleep(0.1 * (attempt + 1))
        observation.replica = head.replica
        if head.retry or head.status != 200:
            rest = head.body if head.retry else b"".join([c async for c in chunks])
            observation.record(head.status)
            return Response(rest, head.status, media_type=head.content_type)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    observation.sse(chunk)
                    yield chunk
            except RETRYABLE as exc:  # the replica died mid-stream: end with an error event
                yield b"data: " + error_body(f"the replica serving this stream died: {exc}", 502) + b"\n\n"
            finally:
                observation.record(200)

        return StreamingResponse(events(), media_type=head.content_type or "text/event-stream")

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if not self.api_key:
            return None
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), self.api_key.encode()):
            return None
        message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
        error = {"message": message, "type": "authentication_error", "param": None, "code": 401}
        return JSONResponse({"error": error}, 401, headers={"www-authenticate": "Bearer"})

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        too_big = BadRequest(413, f"request body is larger than the server's limit of {limit} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _publish_forever(self, period: float) -> None:
        """Publish this ingress's metrics so any ingress replica's /metrics shows them all."""
        while True:
            try:
                text = generate_latest(REGISTRY).decode()
                await self.hub.push.remote(self.id, text, {"ingress": self.id}, {"kind": "ingress"})
            except Exception as exc:
                logger.warning("ingress %s: metrics push failed: %r", self.id, exc)
            await asyncio.sleep(period)


def _unavailable(exc: Exception) -> Reply:
    """Serve could not hand the request to a replica (it died, or all are full): safe to retry."""
    return Reply(503, JSON, error_body(f"no replica could take the request: {exc}", 503), "", retry=True)


def _listing(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "owned_by": "vllm"}
