"""Start vLLM engines and servers on this machine with settings that work without a GPU.

The CLI, the benchmarks and the tests all start engines the same way, from here. On CPU an
engine needs an explicit KV-cache size (vLLM otherwise reserves most of a NUMA node and
refuses to start when that much is not free) and eager mode (skips a 90 s torch.compile).
Every engine makes JSON whitespace-free itself (``STRUCTURED_OUTPUTS_CONFIG``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine_info import MIDDLEWARE

# 512 MiB holds about 22k tokens of this 135M model (23 KiB per token): 10 full 2k contexts,
# while five engines side by side (the test suite) stay well inside 24 GiB.
CPU_KV_CACHE_BYTES = 512 << 20
DEFAULT_MAX_MODEL_LEN = 2048
# JSON without free whitespace for every request, whatever form its schema arrives in
# (compact.py). vLLM takes ``disable_any_whitespace`` only engine-wide, and only with the
# xgrammar or guidance backend ("auto" refuses it); xgrammar is what "auto" picks first.
# A schema xgrammar cannot compile is then refused (400) instead of going to guidance: start
# the engine with {"backend": "guidance", "disable_any_whitespace": true} to take those.
STRUCTURED_OUTPUTS_CONFIG: dict[str, Any] = {"backend": "xgrammar", "disable_any_whitespace": True}


def has_gpu() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` / ``AsyncEngineArgs``: compact JSON and CPU-safe
    defaults, then yours."""
    kwargs: dict[str, Any] = {"structured_outputs_config": dict(STRUCTURED_OUTPUTS_CONFIG)}
    if not has_gpu():
        kwargs |= {
            "enforce_eager": True,
            "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
            "max_model_len": DEFAULT_MAX_MODEL_LEN,
        }
    kwargs.update(overrides)
    return kwargs


def server_args(engine: dict[str, Any]) -> list[str]:
    """The same engine keywords as ``vllm.entrypoints.openai.api_server`` flags."""
    args: list[str] = []
    for key, value in engine.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A vLLM OpenAI-compatible server in a subprocess on loopback, stopped with its whole tree.

    The server runs in its own session (process group), so stopping it kills the API server and
    the engine-core processes it spawned. Its log goes to ``log_path`` for post-mortems.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        served_model_name: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        **engine: Any,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self.command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *(["--served-model-name", served_model_name] if served_model_name else []),
            *server_args(engine_kwargs(**engine)),
            "--middleware", MIDDLEWARE,  # /version says the engine keeps JSON compact
            *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> LocalServer:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vLLM server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace``."""
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        _signal_group(pgid, signal.SIGKILL)
        self.process.wait()
        self.process = None
        deadline = time.monotonic() + grace
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process of group ``pgid`` still exists.

    Zombies are left out: an orphaned engine worker that has exited may linger as a zombie
    where PID 1 does not reap, and it holds no memory, port or core.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
