"""A real Prometheus (Debian's package) for tests, and the reading of ``/metrics`` texts.

Tests that check what Prometheus sees start one here rather than each writing its own config,
process handling and HTTP API calls; its log stays in its folder and is shown when it fails.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from outlines_vllm.launch import free_port

JOB = "outlines-vllm"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(base_url: str) -> Samples:
    """``{sample name: [(labels, value), ...]}`` of a server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(base_url + "/metrics", timeout=10)
    assert response.status_code == 200, f"{base_url}/metrics answered {response.status_code}"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric_sum(samples: Samples, name: str, **match: Any) -> float:
    """The sum of sample ``name`` over the series whose labels include ``match``."""
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.5) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class Prometheus:
    """Debian's ``prometheus`` on a free loopback port, its config, data and log in ``folder``.

    Use as a context manager: ``stop()`` runs on exit, even when starting failed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log_path = folder / "prometheus.log"
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(
        self, targets: list[str], labels: dict[str, str] | None = None, scrape_interval: str = "1s"
    ) -> Prometheus:
        """Scrape ``targets`` (``host:port``) as job ``outlines-vllm``, adding ``labels`` to their series."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("Debian's prometheus is not installed: run scripts/system-deps.sh (make setup does)")
        static: dict[str, Any] = {"targets": targets}
        if labels:
            static["labels"] = labels
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [static]}],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        address = f"127.0.0.1:{free_port()}"
        self.url = f"http://{address}"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address={address}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant PromQL query (the query must succeed)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert response["status"] == "success", f"{promql}: {response}"
        return response["data"]["result"]

    def health(self) -> list[str]:
        """Each active target's health (``up`` once its last scrape was fetched and parsed)."""
        try:
            targets = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        except (httpx.HTTPError, KeyError, ValueError):
            return []
        return [target["health"] for target in targets]

    def targets_up(self) -> bool:
        """Prometheus has targets and the last scrape of every one succeeded."""
        health = self.health()
        return bool(health) and all(h == "up" for h in health)

    def wait_until_up(self, n_targets: int, timeout: float = 30.0) -> None:
        """Wait until Prometheus has scraped all ``n_targets`` targets successfully."""

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"Prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            return len(self.health()) == n_targets and self.targets_up()

        if not wait_for(up, timeout):
            pytest.fail(
                f"Prometheus never scraped all {n_targets} targets successfully: {self.health()}\n"
                f"{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM (Prometheus flushes and exits), SIGKILL if it takes longer than 15 s."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
