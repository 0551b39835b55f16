"""The Ray Serve app as the tests use it: ``outlines-vllm serve`` in a subprocess on loopback.

Running the real CLI (rather than Ray inside pytest) tests the command users run, keeps Ray out
of the pytest process (other tests embed vLLM there), and makes shutdown observable: after the
CLI exits, no engine process marked by a replica may remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from outlines_vllm.launch import free_port, group_alive
from outlines_vllm.server.reaper import OWNER_ENV, kill_marked, marked_processes
from tests.conftest import SERVED_NAME
from tests.prometheus import Samples, scrape

API_KEY = "test-key"


class RayApp:
    """``outlines-vllm serve`` of ``model`` (``replicas`` fixed), or of a whole app ``config``
    (the ``args`` of a Serve config file) when given; ``expect`` = {model: healthy replicas}."""

    def __init__(
        self,
        model: Path | None,
        log_path: Path,
        *,
        replicas: int = 2,
        config: dict | None = None,
        expect: dict[str, int] | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = API_KEY
        self.log_path = log_path
        if config is not None:
            path = log_path.with_suffix(".config.json")
            path.write_text(json.dumps(config))
            target = ["--config", str(path)]
        else:
            target = ["--model", str(model), "--name", SERVED_NAME, "--replicas", str(replicas)]
        self.command = [
            sys.executable, "-m", "outlines_vllm.cli", "serve", *target,
            "--api-key", API_KEY, "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.expect = expect or {SERVED_NAME: replicas}
        self.replicas = replicas
        self.owner = uuid.uuid4().hex  # marks this app's engine processes apart from other runs'
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 420.0) -> RayApp:
        log = self.log_path.open("wb")
        env = {**os.environ, OWNER_ENV: self.owner}
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"outlines-vllm serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            # "serving" is printed once HAProxy routes to every replica, not only Serve
            if (
                self.replica_counts() == self.expect
                and b"outlines-vllm: serving" in self.log_path.read_bytes()
            ):
                return self
            time.sleep(2.0)
        self.stop()
        raise TimeoutError(f"the Ray app was not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def replica_counts(self) -> dict[str, int]:
        """``{model: healthy replicas}`` from ``/health`` (empty while the app is not up)."""
        status, body = self.get("/health")
        if status not in (200, 503) or not body:
            return {}
        try:
            return {k: int(v) for k, v in json.loads(body).get("replicas", {}).items()}
        except (ValueError, AttributeError):  # the proxy's own 503 page while no replica is up
            return {}

    def healthy_replicas(self, model: str = SERVED_NAME) -> int:
        return self.replica_counts().get(model, 0)

    def metrics(self) -> Samples:
        """``{sample name: [(labels, value), ...]}`` from the ingress's /metrics."""
        return scrape(self.base_url)

    def engine_pids(self) -> dict[str, list[int]]:
        """``{replica id: [pids of its vLLM processes]}``."""
        by_replica: dict[str, list[int]] = {}
        for pid, replica in marked_processes(owner=self.owner).items():
            by_replica.setdefault(replica, []).append(pid)
        return by_replica

    def slow_request(self, tokens: int = 96) -> Future[int]:
        """Start a chat request that generates ``tokens`` tokens; its future gives the HTTP status."""
        body = {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "Tell a story."}],
            "max_tokens": tokens,
            "min_tokens": tokens,
        }
        request = urllib.request.Request(
            self.base_url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )

        def send() -> int:
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    content = json.loads(response.read())["choices"][0]["message"]["content"]
                    return response.status if content else 0
            except urllib.error.HTTPError as exc:
                return exc.code
            except (urllib.error.URLError, OSError):
                return 0

        future: Future[int] = ThreadPoolExecutor(1).submit(send)
        time.sleep(1.0)  # let it reach an engine
        return future

    def stop(self, timeout: float = 90.0) -> list[int]:
        """SIGTERM the CLI (it drains and stops Ray); returns engine pids that outlived it."""
        if self.process is None:
            return []
        pgid = self.process.pid
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        deadline = time.monotonic() + 20
        while marked_processes(owner=self.owner) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = kill_marked(owner=self.owner)
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        return leftovers

    def close(self) -> None:
        """Stop the app; no engine process of it may outlive the CLI."""
        leftovers = self.stop()
        assert not leftovers, f"engine processes {leftovers} outlived the Ray app"

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
