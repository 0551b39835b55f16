"""One engine replica: vLLM's engine (``AsyncLLM``) and vLLM's own OpenAI app, in the Serve replica.

Why in-process (and not, as before, a vLLM server subprocess behind a separate ingress
deployment): a request then makes one hop, Serve's proxy -> this replica, instead of proxy ->
ingress replica -> handle stream -> engine replica -> HTTP to a subprocess; measured with
``outlines-vllm bench serving`` (server/README.md). vLLM's own OpenAI layer still answers
(``build_app`` + ``init_app_state``, the same code ``vllm serve`` runs), so every field, error
and SSE format stays vLLM's. The engine core is still a process of its own (vLLM V1 starts it),
so a crashed engine fails ``check_health`` and Serve replaces the replica; a stopped replica
shuts its engine down with it.

Each replica also serves the same vLLM app, without the gate, on a loopback port
(:meth:`EngineReplica.engine_url`): the "direct" path the serving benchmark compares against,
and a debugging aid on the replica's node (the old subprocess listened there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import disable_created_metrics, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..launch import engine_kwargs, free_port, has_gpu, server_args
from ..metrics import REGISTRY, REPLICA_UP
from .config import AppConfig, ModelConfig
from .exposition import Families, merge
from .gate import Gate, Message, Scope, Send, call, error_body, respond
from .reaper import REPLICA_ENV
from .validation import RequestInfo

logger = logging.getLogger("ray.serve")


def cpu_cores(rank: int, cpus: float) -> str:
    """The cores (``VLLM_CPU_OMP_THREADS_BIND``) for the replica of local ``rank``: its own slice."""
    width = max(1, int(cpus))
    total = os.cpu_count() or 1
    first = (rank * width) % total
    last = min(first + width, total) - 1
    return str(first) if first == last else f"{first}-{last}"


def vllm_argv(model: ModelConfig, location: str) -> list[str]:
    """The ``vllm serve`` command line of ``model``: engine options through ``engine_kwargs()``
    (so project-wide engine defaults reach every replica), then the raw ``vllm_args``."""
    engine: dict[str, Any] = dict(model.engine)
    if model.tensor_parallel_size > 1:
        engine.setdefault("tensor_parallel_size", model.tensor_parallel_size)
    if model.pipeline_parallel_size > 1:
        engine.setdefault("pipeline_parallel_size", model.pipeline_parallel_size)
        engine.setdefault("distributed_executor_backend", "ray")  # workers in the placement group
    elif model.tensor_parallel_size > 1:
        engine.setdefault("distributed_executor_backend", "mp")  # GPUs Ray gave this replica
    return [
        "--model", location,
        "--served-model-name", model.served_name,
        "--disable-uvicorn-access-log",
        *server_args(engine_kwargs(**engine)),
        *model.vllm_args,
    ]  # fmt: skip


def parse_vllm_args(argv: list[str]) -> Any:
    """vLLM's own parser and checks for its OpenAI server: a bad flag fails the deploy early."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(args)
    return args


class EngineReplica:
    """Serve replica class of a model's deployment (``app.build_app`` makes it an ASGI ingress)."""

    async def __init__(
        self,
        model: ModelConfig,
        others: dict[str, DeploymentHandle],
        hub: DeploymentHandle,
        config: AppConfig,
    ) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
        from vllm.entrypoints.launchers.app import build_app

        disable_created_metrics()
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.model = model.served_name
        self.models = [m.served_name for m in config.models]
        self.others = others
        self.hub = hub
        self.cards: list[dict[str, Any]] | None = None
        # The engine core process inherits this: tests and operators find it by the mark.
        os.environ[REPLICA_ENV] = self.replica
        if not has_gpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores(context.rank.local_rank, model.replica_cpus)
        args = parse_vllm_args(vllm_argv(model, model.model_location()))
        logger.info("replica %s: starting the vLLM engine (%s)", self.replica, args.model)
        self.stack = contextlib.AsyncExitStack()
        self.engine = await self.stack.enter_async_context(
            build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args))
        )
        tasks = await self.engine.get_supported_tasks()
        self.vllm_app = build_app(args, tasks, self.engine.model_config)
        await init_app_state(self.engine, self.vllm_app.state, args, tasks)
        self.gate = Gate(self, config.resolved_api_key(), config.max_body_bytes)
        self.direct_port = free_port()
        self.direct = asyncio.create_task(self._serve_direct())
        self.info = {"kind": "replica", "model": self.model, "node": _node_ip(), "rank": context.rank.rank}
        self.publisher = asyncio.create_task(self._publish_forever(config.metrics_push_period_s))

    def __serve_build_asgi_app__(self) -> Gate:
        return self.gate

    # --- what the gate asks of its replica ----------------------------------------------------

    def unavailable(self) -> str | None:
        """Why this replica cannot take a request now (its engine died), else None."""
        if self.engine.errored:
            return f"replica {self.replica}: its vLLM engine is dead and is being replaced; retry"
        return None

    async def forward(self, info: RequestInfo, scope: Scope, send: Send) -> None:
        """Serve a request for another model through a replica of that model's deployment
        (its request router picks the replica; a prefix-affinity one reads ``routing``)."""
        model = info.model
        scope = {
            k: v
            for k, v in scope.items()
            if k
            in ("type", "http_version", "method", "path", "headers", "query_string", "scheme", "root_path")
        }
        routing = SimpleNamespace(**info.routing)
        stream = self.others[model].options(stream=True).serve_forwarded.remote(routing, scope, info.body)
        started = False
        try:
            async for message in stream:
                started = started or message["type"] == "http.response.start"
                await send(message)
        except Exception as exc:  # the other replica died: say so (retryable) if nothing was sent
            if started:
                raise
            await respond(send, 503, error_body(f"the replica of {model!r} failed: {exc}; retry", 503))

    async def serve_forwarded(self, routing: Any, scope: Scope, body: bytes) -> AsyncIterator[Message]:
        """The other end of :meth:`forward`: run the gate here and stream its ASGI messages
        (``routing`` was for the request router)."""
        async for message in call(self.gate, scope, body):
            yield message

    async def all_model_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards of every served model (cached once all answered)."""
        if self.cards is not None:
            return self.cards
        cards = await self.model_cards()
        complete = True
        for name, handle in self.others.items():
            try:
                cards += await asyncio.wait_for(handle.model_cards.remote(), 10)
            except Exception:
                complete = False
                cards.append({"id": name, "object": "model", "owned_by": "vllm"})
        if complete:
            self.cards = cards
        return cards

    async def model_cards(self) -> list[dict[str, Any]]:
        models = await self.vllm_app.state.openai_serving_models.show_available_models()
        return [card.model_dump() for card in models.data]

    async def app_health(self) -> tuple[int, dict[str, Any]]:
        """200 while every model has a healthy replica; 503 names the models that have none."""
        try:
            replicas = await asyncio.wait_for(self.hub.replicas.remote(), 5)
        except Exception as exc:
            return 503, {"status": f"replica state unavailable: {exc!r}"}
        up = {name: 0 for name in self.models}
        for info in replicas.values():
            if info.get("up") and info.get("model") in up:
                up[info["model"]] += 1
        missing = sorted(name for name, count in up.items() if not count)
        status = f"no healthy replica for {missing}" if missing else "ok"
        return (503 if missing else 200), {"status": status, "replicas": up}

    async def app_metrics(self) -> bytes:
        """Every replica's ``outlines_vllm_*`` and ``vllm:*`` series, each with its replica label."""
        try:
            sources = await asyncio.wait_for(self.hub.snapshot.remote(), 5)
        except Exception as exc:
            logger.warning("replica %s: metrics hub unavailable: %r", self.replica, exc)
            sources = {}
        sources[self.replica] = (self._exposition(), {"replica": self.replica})
        return merge(sources.values())

    # --- Serve hooks ---------------------------------------------------------------------------

    def engine_url(self) -> str:
        """This replica's vLLM app without the gate, on loopback: ``bench serving``'s direct path."""
        return f"http://127.0.0.1:{self.direct_port}"

    async def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``; raising makes it replace the replica."""
        try:
            await asyncio.wait_for(self.engine.check_health(), 5)
        except Exception:
            REPLICA_UP.labels(self.model, self.replica).set(0)
            raise
        REPLICA_UP.labels(self.model, self.replica).set(1)

    async def __del__(self) -> None:
        """Serve has drained this replica's requests: stop publishing, then stop the engine."""
        self.publisher.cancel()
        self.direct.cancel()
        with contextlib.suppress(Exception):  # not awaited: the hub may be stopping too
            self.hub.drop.remote(self.replica)
        await self.stack.aclose()

    # --- internals -----------------------------------------------------------------------------

    async def _serve_direct(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.vllm_app,
            host="127.0.0.1",
            port=self.direct_port,
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
        await uvicorn.Server(config).serve()

    def _exposition(self) -> str:
        """This process's ``outlines_vllm_*`` series and its engine's ``vllm:*`` series."""
        vllm = Families(f for f in DEFAULT_REGISTRY.collect() if f.name.startswith("vllm:"))
        return generate_latest(REGISTRY).decode() + generate_latest(vllm).decode()

    async def _publish_forever(self, period: float) -> None:
        """Push this replica's metrics and state to the hub every ``period`` seconds."""
        while True:
            up = not self.engine.errored
            REPLICA_UP.labels(self.model, self.replica).set(1 if up else 0)
            try:
                await self.hub.push.remote(
                    self.replica, self._exposition(), {"replica": self.replica}, {**self.info, "up": up}
                )
            except Exception as exc:  # the hub restarting must not stop the replica
                logger.warning("replica %s: metrics push failed: %r", self.replica, exc)
            await asyncio.sleep(period)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()
