"""Find (and, for tests and operators, kill) the engine processes of the app's replicas.

Each replica runs vLLM's engine in-process; vLLM starts the engine core as a child process of
the replica's Ray worker, which inherits ``OUTLINES_VLLM_REPLICA=<replica id>`` from it. When
Serve stops a replica, the replica shuts its engine down; when a replica's worker dies outright,
Ray kills the worker's child processes, the engine core among them. So no watchdog is needed
any more (the previous design ran vLLM servers whose engine cores were grandchildren, out of
Ray's reach); what remains is finding the marked processes, with psutil.

``OUTLINES_VLLM_OWNER`` (optional, inherited from whoever started Ray) tells apart the engines
of several apps on one machine, e.g. two test sessions.
"""

from __future__ import annotations

import contextlib
import os

import psutil

REPLICA_ENV = "OUTLINES_VLLM_REPLICA"
OWNER_ENV = "OUTLINES_VLLM_OWNER"


def marked_processes(replica: str | None = None, owner: str | None = None) -> dict[int, str]:
    """``{pid: replica id}`` of this user's engine processes (of ``replica`` / ``owner`` if given)."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
        except (psutil.Error, OSError):  # gone, or another user's process
            continue
        mark = env.get(REPLICA_ENV)
        if mark and replica in (None, mark) and owner in (None, env.get(OWNER_ENV)):
            found[proc.pid] = mark
    return found


def kill_marked(replica: str | None = None, owner: str | None = None) -> list[int]:
    """SIGKILL every engine process of ``replica`` (every replica's when None, of ``owner``)."""
    pids = [pid for pid in marked_processes(replica, owner) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    return pids
