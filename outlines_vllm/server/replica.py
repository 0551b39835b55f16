"""One engine replica: a Serve deployment replica that owns one vLLM OpenAI server subprocess.

Why a subprocess (``python -m vllm.entrypoints.openai.api_server`` via ``LocalServer``) rather
than an in-process engine: the replica then speaks exactly vLLM's own OpenAI API (every field,
error and streaming format is vLLM's, nothing re-implemented), a crashed engine cannot take the
replica's Ray worker down with it, and ``check_health`` can see the engine die and make Serve
replace the replica. The subprocess listens on loopback only; the replica proxies to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import disable_created_metrics, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..launch import LocalServer, has_gpu
from ..metrics import REGISTRY, REPLICA_UP
from .config import ModelConfig
from .reaper import REPLICA_ENV, kill_marked, start_watchdog

logger = logging.getLogger("ray.serve")
JSON = "application/json"


@dataclass
class Reply:
    """A replica's answer: the engine's HTTP status, content type and body, or why there is none.

    ``retry`` means the engine was never reached (refused connection), so the ingress may send
    the request to another replica without any risk of running it twice.
    """

    status: int
    content_type: str
    body: bytes
    replica: str
    retry: bool = False


def error_body(message: str, status: int, error_type: str = "server_error") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    ).encode()


def cpu_cores(rank: int, cpus: float) -> str:
    """The cores (``VLLM_CPU_OMP_THREADS_BIND``) for the replica of local ``rank``: its own slice."""
    width = max(1, int(cpus))
    total = os.cpu_count() or 1
    first = (rank * width) % total
    last = min(first + width, total) - 1
    return str(first) if first == last else f"{first}-{last}"


class EngineReplica:
    """Serve replica class of a model's engine deployment (``app.build_app`` makes the deployment)."""

    async def __init__(self, model: ModelConfig, hub: DeploymentHandle, push_period_s: float = 2.0) -> None:
        disable_created_metrics()
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.model = model.served_name
        self.hub = hub
        self.up = False
        env = {REPLICA_ENV: self.replica}
        if not has_gpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores(context.rank.local_rank, model.replica_cpus)
        engine: dict[str, Any] = dict(model.engine)
        if model.tensor_parallel_size > 1:
            engine.setdefault("tensor_parallel_size", model.tensor_parallel_size)
            engine.setdefault("distributed_executor_backend", "mp")  # GPUs Ray gave this replica
        log = tempfile.mkstemp(prefix=f"vllm-replica-{self.replica}-", suffix=".log")[1]
        self.server = LocalServer(
            model.model_location(),
            served_model_name=self.model,
            extra_args=model.vllm_args,
            env=env,
            log_path=log,
            **engine,
        )
        self.watchdog = start_watchdog(self.replica)  # first, so a kill during start-up is covered
        logger.info("replica %s: starting vLLM (%s), log %s", self.replica, env, log)
        await asyncio.to_thread(self.server.start, model.startup_timeout_s)
        self.client = httpx.AsyncClient(
            base_url=self.server.base_url,
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self.up = True
        self.info = {
            "kind": "replica",
            "model": self.model,
            "pid": self.server.process.pid,
            "node": _node_ip(),
            "rank": context.rank.rank,
            "log": log,
        }
        self.publisher = asyncio.create_task(self._publish_forever(push_period_s))

    async def forward(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send one request to the engine and return its whole answer."""
        try:
            response = await self.client.request(
                method, path, content=body, headers={"content-type": JSON} if body else None
            )
        except httpx.ConnectError as exc:
            return self._unreachable(exc)
        except httpx.HTTPError as exc:
            return Reply(502, JSON, self._failed(exc), self.replica)
        return Reply(
            response.status_code, response.headers.get("content-type", JSON), response.content, self.replica
        )

    async def stream(self, path: str, body: bytes) -> AsyncIterator[Reply | bytes]:
        """Stream one request: first a body-less :class:`Reply` (the head), then the raw bytes."""
        started = False
        try:
            async with self.client.stream("POST", path, content=body, headers={"content-type": JSON}) as r:
                yield Reply(r.status_code, r.headers.get("content-type", JSON), b"", self.replica)
                started = True
                async for chunk in r.aiter_raw():
                    yield chunk
        except httpx.ConnectError as exc:
            yield self._unreachable(exc)
        except httpx.HTTPError as exc:
            if not started:
                yield Reply(502, JSON, self._failed(exc), self.replica)
            else:  # the SSE stream already began: end it with an error event the SDKs raise
                yield b"data: " + self._failed(exc) + b"\n\n"

    def engine_url(self) -> str:
        """This replica's engine's own OpenAI endpoint (loopback, on the replica's node): the
        "direct" path ``bench serving`` compares the app against."""
        return self.server.base_url

    async def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; raising makes it replace the replica."""
        code = self.server.process.poll() if self.server.process else -1
        if code is not None:
            self.up = False
            raise RuntimeError(
                f"replica {self.replica}: vLLM exited with code {code}, log {self.server.log_path}"
            )
        try:
            response = await self.client.get("/health", timeout=5.0)
            self.up = response.status_code == 200
        except httpx.HTTPError as exc:
            self.up = False
            raise RuntimeError(f"replica {self.replica}: vLLM /health failed: {exc!r}") from exc
        if not self.up:
            raise RuntimeError(f"replica {self.replica}: vLLM /health answered {response.status_code}")

    async def __del__(self) -> None:
        """Serve has drained this replica's requests: stop publishing, then stop the engine."""
        self.publisher.cancel()
        with contextlib.suppress(Exception):  # not awaited: the hub may be stopping too
            self.hub.drop.remote(self.replica)
        await self.client.aclose()
        await asyncio.to_thread(self.server.stop)
        kill_marked(self.replica)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.watchdog, signal.SIGKILL)

    async def _publish_forever(self, period: float) -> None:
        """Push this replica's ``vllm:`` metrics and state to the hub every ``period`` seconds."""
        while True:
            try:
                text = (await self.client.get("/metrics", timeout=5.0)).text
            except httpx.HTTPError:
                text = ""
            REPLICA_UP.labels(self.model, self.replica).set(1 if self.up else 0)
            own = generate_latest(REGISTRY).decode()
            try:
                await self.hub.push.remote(
                    self.replica, own + text, {"replica": self.replica}, {**self.info, "up": self.up}
                )
            except Exception as exc:  # the hub restarting must not stop the replica
                logger.warning("replica %s: metrics push failed: %r", self.replica, exc)
            await asyncio.sleep(period)

    def _unreachable(self, exc: Exception) -> Reply:
        self.up = False
        message = f"replica {self.replica}: its vLLM engine is not reachable ({exc!r}); retry"
        return Reply(503, JSON, error_body(message, 503), self.replica, retry=True)

    def _failed(self, exc: Exception) -> bytes:
        return error_body(f"replica {self.replica}: the vLLM engine failed mid-request ({exc!r}); retry", 502)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()
