"""Engine processes belong to their replica: find them, and kill them if the replica dies.

Each replica starts its vLLM server in a process group of its own (so stopping it stops the
engine core too) and marks it with ``OUTLINES_VLLM_REPLICA=<replica id>`` in its environment.
A replica stopped by Serve stops its engine itself. A replica that dies outright cannot, and Ray
then kills only the worker's direct children (the API server), not the engine core below it.
So each replica also starts a watchdog, detached (double fork) so Ray does not kill it with the
worker, that waits for the replica to disappear and then kills every process carrying its mark.

``OUTLINES_VLLM_OWNER`` (optional, inherited from whoever started Ray) tells apart the engines
of several apps on one machine, e.g. two test sessions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPLICA_ENV = "OUTLINES_VLLM_REPLICA"
OWNER_ENV = "OUTLINES_VLLM_OWNER"
MODULE = "outlines_vllm.server.reaper"  # not __name__, which is "__main__" when run


def marked_processes(replica: str | None = None, owner: str | None = None) -> dict[int, str]:
    """``{pid: replica id}`` of this user's engine processes (of ``replica`` / ``owner`` if given)."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            items = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's process
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)
        mark = env.get(REPLICA_ENV)
        if mark and replica in (None, mark) and owner in (None, env.get(OWNER_ENV)):
            found[int(proc.name)] = mark
    return found


def kill_marked(replica: str | None = None, owner: str | None = None) -> list[int]:
    """SIGKILL every engine process of ``replica`` (every replica's when None, of ``owner``)."""
    pids = [pid for pid in marked_processes(replica, owner) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def start_watchdog(replica: str) -> int:
    """Start (detached) a process that kills ``replica``'s engine once this process has died."""
    spawned = subprocess.run(
        [sys.executable, "-m", MODULE, "spawn", str(os.getpid()), replica],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(spawned.stdout)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # an unreaped zombie is dead too


def main(argv: list[str]) -> int:
    command, parent, replica = argv[0], int(argv[1]), argv[2]
    if command == "spawn":  # the middle of the double fork: start the watcher and leave
        watcher = subprocess.Popen(
            [sys.executable, "-m", MODULE, "watch", str(parent), replica],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(watcher.pid)
        return 0
    while _alive(parent):
        time.sleep(1.0)
    kill_marked(replica)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
