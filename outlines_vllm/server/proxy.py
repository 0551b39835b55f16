"""The HTTP proxy in front of the engine replicas: HAProxy (default) or Serve's own proxy.

The choice is made through environment variables that Ray reads when its modules are first
imported (in this process too: Serve checks the app against them), so they are set before
anything imports ``ray.serve`` (``app.deployed``), and on every node of a cluster you start
yourself (KubeRay: k8s/overlays/ray).
"""

from __future__ import annotations

import contextlib
import os
import time

PROXIES = ("haproxy", "serve")


def proxy_env(proxy: str) -> dict[str, str]:
    """Ray Serve's environment for this app behind ``proxy``: ``haproxy`` (default) puts HAProxy
    on the HTTP port, forwarding each connection straight to an engine replica's own HTTP server
    (Serve's direct ingress); ``serve`` keeps Serve's Python proxy, which relays every streamed
    chunk through a Ray call (measured: server/README.md). Set the same variables on a Ray
    cluster you start yourself (KubeRay: k8s/overlays/ray)."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
    on = "1" if proxy == "haproxy" else "0"
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": on,
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": on,
        # HAProxy hands a request router the body (prefix_affinity reads the prompt from it);
        # apps without a request router are not affected.
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": on,
        # The gate and vLLM's app run on the loop of the replica's HTTP server, not on a thread
        # of their own: no hop between threads per streamed chunk. Measured with the dummy
        # engine at c=16: the replica's CPU per chunk through the app, over direct, falls from
        # +56 to +26 µs (server/README.md). vLLM's own server runs on one loop too.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    }


INGRESS_PORTS = range(20000, 32000)  # below Linux's ephemeral ports (32768-60999)
PORT_BLOCK = 100  # replica ports an app may use in turn: each replacement takes a new one


def free_port_block(size: int = PORT_BLOCK, ports: range = INGRESS_PORTS) -> int:
    """The first port of ``size`` consecutive ports in ``ports`` that are all free now, blocks
    tried in random order (two apps starting at once rarely pick the same)."""
    import random
    import socket

    starts = list(range(ports.start, ports.stop - size + 1, size))
    random.shuffle(starts)
    for start in starts:
        try:
            with contextlib.ExitStack() as held:
                for port in range(start, start + size):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("0.0.0.0", port))
            return start
        except OSError:
            continue
    raise RuntimeError(f"no {size} free consecutive ports in {ports.start}-{ports.stop - 1}")


def private_haproxy_env() -> dict[str, str]:
    """Ports and files of its own for the HAProxy of a Ray cluster this process starts, and a
    port block of its own for the replicas HAProxy forwards to. Serve's defaults (:9101, :8404,
    /tmp/haproxy-serve, replica ports from 30000) collide when two apps run on one machine
    (two test fixtures in CI: one app's HAProxy answered 404 for its own model and /metrics,
    as another app's replica on a shared port would). Variables already set win."""
    import tempfile

    from ..launch import free_port

    folder = tempfile.mkdtemp(prefix="ovh", dir="/tmp")  # unix socket paths: at most 97 bytes
    http = free_port_block(2 * PORT_BLOCK)  # gRPC (used only when enabled) takes the upper half
    env = {
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + PORT_BLOCK - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(http + PORT_BLOCK),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(http + 2 * PORT_BLOCK - 1),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
    }
    return {k: v for k, v in env.items() if k not in os.environ}


ROUTER_BACKEND_SUFFIX = "-via-ingress-request-router"  # Serve's name for a router's twin backend


def haproxy_servers_up(socket_path: str) -> int:
    """Replicas HAProxy forwards to now: servers UP (not backups) in the app's backends, read
    from its admin socket (``show stat``, CSV)."""
    import csv
    import io
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2.0)
        conn.connect(socket_path)
        conn.sendall(b"show stat\n")
        data = b"".join(iter(lambda: conn.recv(1 << 16), b""))
    rows = csv.DictReader(io.StringIO(data.decode().removeprefix("# ")))
    return sum(
        1
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
        and not row["pxname"].endswith(ROUTER_BACKEND_SUFFIX)
        and row.get("bck") != "1"
        and row["status"].startswith("UP")
    )


def wait_for_haproxy(want: int, timeout_s: float = 60.0) -> None:
    """Serve reports a replica ready before HAProxy's health checks (every 5 s, two to rise)
    mark it UP; until then every request goes to the replicas already UP. Wait until ``want``
    replicas are UP, so "serving" means balanced."""
    socket_path = os.environ.get("RAY_SERVE_HAPROXY_SOCKET_PATH", "/tmp/haproxy-serve/admin.sock")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, UnicodeDecodeError):
            if haproxy_servers_up(socket_path) >= want:
                return
        time.sleep(0.5)
    print(f"outlines-vllm: HAProxy does not list {want} replicas UP after {timeout_s:.0f} s", flush=True)
