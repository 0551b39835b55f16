"""Build and run the Ray Serve app: an ingress, a metrics hub, and one engine deployment per model.

``build_app(args)`` is the Serve application builder that ``server/serve-config.yaml``
(``import_path: outlines_vllm.server.app:build_app``), ``serve run`` / ``serve deploy`` and
KubeRay's RayService use; ``run()`` is what ``outlines-vllm serve`` does on top of it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ray.serve import Application

from .config import AppConfig, ModelConfig

APP_NAME = "outlines-vllm"
# What a request crosses, as the serving benchmark labels its results.
DESIGN = "proxy -> ingress replica -> engine replica -> vLLM subprocess (httpx)"


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """The app for ``args`` (an :class:`AppConfig` or its dict form, e.g. a config file's ``args``)."""
    # The classes stay plain module classes (decorated here, not where they are defined) so Ray
    # pickles them by reference instead of by value with their module globals.
    from ray import serve

    from .hub import MetricsHub
    from .ingress import Ingress, app
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
    engines = {
        m.served_name: serve.deployment(
            EngineReplica, name=m.deployment_name, **engine_options(m, config)
        ).bind(m, hub, config.metrics_push_period_s)
        for m in config.models
    }
    ingress = serve.deployment(
        serve.ingress(app)(Ingress),
        name="ingress",
        num_replicas=config.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
    )
    return ingress.bind(engines, hub, config)


def engine_options(model: ModelConfig, config: AppConfig) -> dict[str, Any]:
    """Serve options of one model's engine deployment: resources, scaling, health, shutdown."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": model.replica_cpus, "num_gpus": _gpus(model)},
        "max_ongoing_requests": model.max_ongoing_requests,
        "health_check_period_s": config.health_check_period_s,
        "health_check_timeout_s": config.health_check_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
    }
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


def _gpus(model: ModelConfig) -> float:
    """GPUs per replica: as configured, else its tensor-parallel size when the cluster has GPUs."""
    if model.gpus_per_replica is not None:
        return model.gpus_per_replica
    import ray

    from ..launch import has_gpu

    cluster_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    return float(model.tensor_parallel_size) if cluster_gpus or has_gpu() else 0.0


def run(
    config: AppConfig, *, host: str = "0.0.0.0", port: int = 8000, ray_address: str | None = None
) -> None:
    """Start (or join) Ray, deploy the app, serve until SIGINT/SIGTERM, then drain and stop."""
    stop = threading.Event()
    with deployed(config, host=host, port=port, ray_address=ray_address):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        names = [m.served_name for m in config.models]
        print(f"outlines-vllm: serving {names} at http://{host}:{port}/v1 (metrics at /metrics)", flush=True)
        while not stop.wait(1.0):
            pass
        print("outlines-vllm: draining in-flight requests and stopping...", flush=True)


@contextlib.contextmanager
def deployed(
    config: AppConfig, *, host: str = "0.0.0.0", port: int = 8000, ray_address: str | None = None
) -> Iterator[None]:
    """The app deployed and healthy for the ``with`` body (Ray started or joined), then drained
    and, when this call started Ray, Ray stopped. ``run`` and ``bench serving`` use it."""
    import ray
    from ray import serve

    ray.init(address=ray_address, include_dashboard=False, logging_level="warning")
    own_cluster = ray_address is None
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
