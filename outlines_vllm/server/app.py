"""Build and run the Ray Serve app: an ingress, a metrics hub, and one engine deployment per model.

``build_app(args)`` is the Serve application builder that ``server/serve-config.yaml``
(``import_path: outlines_vllm.server.app:build_app``), ``serve run`` / ``serve deploy`` and
KubeRay's RayService use; ``run()`` is what ``outlines-vllm serve`` does on top of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .config import AppConfig, ModelConfig
from .proxy import private_haproxy_env, proxy_env, wait_for_haproxy

if TYPE_CHECKING:  # ray.serve is imported only once the proxy environment is set (deployed)
    from ray.serve import Application

APP_NAME = "outlines-vllm"
# What a request crosses, as the serving benchmark labels its results.
DESIGN = "proxy -> engine replica (gate + vLLM OpenAI app + AsyncLLM in process)"


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """The app for ``args`` (an :class:`AppConfig` or its dict form, e.g. a config file's ``args``).

    One deployment per model, each replica an engine with vLLM's OpenAI app in-process behind
    the gate; the first model's deployment is the app's HTTP ingress (Serve's proxy calls it
    directly) and forwards requests naming another model to that model's deployment.
    """
    # The classes stay plain module classes (decorated here, not where they are defined) so Ray
    # pickles them by reference instead of by value with their module globals.
    from ray import serve

    from .hub import MetricsHub
    from .replica import EngineReplica

    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    hub = serve.deployment(
        MetricsHub,
        name="metrics-hub",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
        logging_config={"enable_access_log": False},  # pushes every 2 s from every replica
    ).bind(ttl_s=max(10.0, 5 * config.metrics_push_period_s))

    def deployment(model: ModelConfig, cls: type) -> Any:
        return serve.deployment(cls, name=model.deployment_name, **engine_options(model, config))

    # Serve allows one HTTP (ASGI) deployment per app: the first model's. The others are
    # reached through handles (``EngineReplica.serve_forwarded``), running the same gate.
    first, *rest = config.models
    others = {m.served_name: deployment(m, EngineReplica).bind(m, {}, hub, config) for m in rest}
    ingress = deployment(first, serve.ingress()(EngineReplica)).bind(first, others, hub, config)
    if first.routing == "prefix_affinity":
        ingress = ingress._with_ingress_request_router(_request_router(ingress))
    return ingress


# Ray Serve LLM's prefix-cache-aware policy, made to learn behind HAProxy (routing.py):
# requests whose prompts share a prefix go to the replica that holds it while loads stay close.
PREFIX_ROUTER = "outlines_vllm.server.routing.PrefixAffinityRouter"


def _request_router(ingress: Application) -> Application:
    """The ingress's request router: HAProxy balances on its own and never asks Serve's router,
    so with ``prefix_affinity`` HAProxy first asks this deployment (Ray Serve LLM's ``LLMRouter``,
    fed the request body) which replica to use, the ingress deployment's router deciding."""
    from ray import serve
    from ray.llm._internal.serve.core.ingress.router import LLMRouter

    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        raise ValueError(
            "routing: prefix_affinity needs the HAProxy proxy (outlines-vllm serve's default; "
            "on your own cluster set the variables of proxy.proxy_env('haproxy') on every node)"
        )
    router = serve.deployment(
        LLMRouter,
        name="request-router",
        max_ongoing_requests=1000,  # on every request's path: must never be the queue
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False},
    )
    return router.bind(server=ingress)


def engine_options(model: ModelConfig, config: AppConfig) -> dict[str, Any]:
    """Serve options of one model's deployment: resources, scaling, health, shutdown."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": model.replica_cpus, "num_gpus": _gpus(model)},
        "max_ongoing_requests": model.max_ongoing_requests,
        "health_check_period_s": config.health_check_period_s,
        "health_check_timeout_s": config.health_check_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        # One log line per request costs the replica a measurable share of a core; the
        # outlines_vllm_requests_total series counts every request instead.
        "logging_config": {"enable_access_log": False},
    }
    if bundles := placement_bundles(model, options["ray_actor_options"]["num_gpus"]):
        # The replica (vLLM's driver) sits in the first bundle; vLLM's Ray executor puts one
        # worker per bundle: pipeline stages may land on different nodes (PACK, not STRICT_PACK).
        options["ray_actor_options"] |= {"num_gpus": 0}
        options["placement_group_bundles"] = bundles
        options["placement_group_strategy"] = "PACK"
    if model.routing == "prefix_affinity":
        options["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    if model.replicas is not None:
        options["num_replicas"] = model.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": model.min_replicas,
            "initial_replicas": max(model.min_replicas, 1),
            "max_replicas": model.max_replicas,
            "target_ongoing_requests": model.target_ongoing_requests,
            "upscale_delay_s": model.upscale_delay_s,
            "downscale_delay_s": model.downscale_delay_s,
        }
    return options


def placement_bundles(model: ModelConfig, tp_gpus: float) -> list[dict[str, float]] | None:
    """Ray placement-group bundles of a replica larger than one node, else None.

    Tensor parallel alone stays inside one node: the replica reserves ``tensor_parallel_size``
    GPUs itself and vLLM starts its workers as local processes. With pipeline parallel, each of
    the ``tensor_parallel_size * pipeline_parallel_size`` workers gets a bundle of one GPU (one
    CPU on a CPU-only cluster); the first bundle also holds the replica's own CPUs.
    """
    if model.pipeline_parallel_size == 1:
        return None
    workers = model.tensor_parallel_size * model.pipeline_parallel_size
    per_worker = {"GPU": 1.0} if tp_gpus else {"CPU": 1.0}
    first = {**per_worker, "CPU": per_worker.get("CPU", 0.0) + model.replica_cpus}
    return [first] + [dict(per_worker) for _ in range(workers - 1)]


def _gpus(model: ModelConfig) -> float:
    """GPUs per replica: as configured, else its tensor-parallel size when the cluster has GPUs."""
    if model.gpus_per_replica is not None:
        return model.gpus_per_replica
    import ray

    from ..launch import has_gpu

    cluster_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    return float(model.tensor_parallel_size) if cluster_gpus or has_gpu() else 0.0


def run(
    config: AppConfig,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    ray_address: str | None = None,
    proxy: str = "haproxy",
) -> None:
    """Start (or join) Ray, deploy the app, serve until SIGINT/SIGTERM, then drain and stop."""
    stop = threading.Event()
    with deployed(config, host=host, port=port, ray_address=ray_address, proxy=proxy):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        names = [m.served_name for m in config.models]
        print(f"outlines-vllm: serving {names} at http://{host}:{port}/v1 (metrics at /metrics)", flush=True)
        while not stop.wait(1.0):
            pass
        print("outlines-vllm: draining in-flight requests and stopping...", flush=True)


@contextlib.contextmanager
def deployed(
    config: AppConfig,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    ray_address: str | None = None,
    proxy: str = "haproxy",
) -> Iterator[None]:
    """The app deployed and healthy for the ``with`` body (Ray started or joined), then drained
    and, when this call started Ray, Ray stopped. ``run`` and ``bench serving`` use it."""
    # "local": a cluster of our own even when another Ray runs on this machine.
    own_cluster = ray_address is None
    if own_cluster:  # read by Serve here, in its controller and in replicas (they inherit it)
        os.environ.update(proxy_env(proxy))
        # Ray renices its workers by 15; here the workers are the engines, the whole workload.
        os.environ.setdefault("RAY_worker_niceness", "0")
        if proxy == "haproxy":
            os.environ.update(private_haproxy_env())
    import ray  # only now: Ray reads the proxy variables when imported
    from ray import serve

    ray.init(address=ray_address or "local", include_dashboard=False, logging_level="warning")
    try:
        serve.start(http_options={"host": host, "port": port})
        names = [m.served_name for m in config.models]
        print(f"outlines-vllm: starting {names} (engines take about a minute on CPU)...", flush=True)
        app = build_app(config)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        _with_progress(
            lambda: serve.run(app, name=APP_NAME, route_prefix="/"), config, f"http://{local}:{port}/health"
        )
        if proxy == "haproxy" and own_cluster:
            first = config.models[0]  # the HTTP ingress: HAProxy routes to its replicas
            wait_for_haproxy(first.replicas or max(first.min_replicas, 1))
        yield
    finally:
        # Deleting the app first drains it: the proxy still delivers in-flight responses while
        # Serve waits for every replica's requests (serve.shutdown() would drop the proxy first).
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        if own_cluster:
            serve.shutdown()
            ray.shutdown()


def _with_progress(deploy: Callable[[], object], config: AppConfig, health_url: str) -> None:
    """Run ``deploy`` (it blocks until every replica is up) with a bar of engine replicas ready,
    read from the ingress's ``/health`` (Serve's own status API must not be called meanwhile)."""
    from tqdm.auto import tqdm

    total = sum(m.replicas or max(m.min_replicas, 1) for m in config.models)
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            deploy()
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="deploy", daemon=True).start()
    with tqdm(total=total, desc="engine replicas ready", unit="replica") as bar:
        while not done.wait(2.0):
            with contextlib.suppress(OSError, ValueError, KeyError):  # the ingress may not be up yet
                bar.update(min(_replicas_up(health_url), total) - bar.n)
        if not failure:
            bar.update(total - bar.n)
    if failure:
        raise failure[0]


def _replicas_up(health_url: str) -> int:
    """Healthy engine replicas of every model, from the ingress's /health (200 or 503)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(health_url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503 while some model has no healthy replica
        body = error.read()
    return sum(json.loads(body)["replicas"].values())
