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
from typing import Any

from ray.serve import Application

from .config import AppConfig, ModelConfig

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
    return deployment(first, serve.ingress()(EngineReplica)).bind(first, others, hub, config)


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


PROXIES = ("haproxy", "serve")


def proxy_env(proxy: str) -> dict[str, str]:
    """Ray Serve's environment for ``proxy``: ``haproxy`` (default) puts HAProxy on the HTTP
    port, forwarding each connection straight to an engine replica's own HTTP server (Serve's
    direct ingress); ``serve`` keeps Serve's Python proxy, which relays every streamed chunk
    through a Ray call (measured: server/README.md). Set the same variables on a Ray cluster
    you start yourself (KubeRay: k8s/overlays/ray)."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
    on = "1" if proxy == "haproxy" else "0"
    return {"RAY_SERVE_ENABLE_HA_PROXY": on, "RAY_SERVE_ENABLE_DIRECT_INGRESS": on}


def private_haproxy_env() -> dict[str, str]:
    """Ports and files of its own for the HAProxy of a Ray cluster this process starts (Serve's
    defaults, :9101, :8404 and /tmp/haproxy-serve, collide when two apps run on one machine,
    e.g. two test fixtures); variables already set win."""
    import tempfile

    from ..launch import free_port

    folder = tempfile.mkdtemp(prefix="ovh", dir="/tmp")  # unix socket paths: at most 97 bytes
    env = {
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
    }
    return {k: v for k, v in env.items() if k not in os.environ}


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
    import ray
    from ray import serve

    # "local": a cluster of our own even when another Ray runs on this machine.
    own_cluster = ray_address is None
    if own_cluster:  # read by the Serve controller and replicas, which inherit this environment
        os.environ.update(proxy_env(proxy))
        # Ray renices its workers by 15; here the workers are the engines, the whole workload.
        os.environ.setdefault("RAY_worker_niceness", "0")
        if proxy == "haproxy":
            os.environ.update(private_haproxy_env())
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
