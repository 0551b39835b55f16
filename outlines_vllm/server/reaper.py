"""Engine processes belong to their replica: find them, and kill them if the replica dies.

Each replica starts its vLLM server in a process group of its own (so stopping it stops the
engine core too) and marks it with ``OUTLINES_VLLM_REPLICA=<replica id>`` in its environment.
A replica stopped by Serve stops its engine itself; a replica killed outright (SIGKILL, node
shutdown, ``ray stop``) cannot, so a small watchdog process (``python -m
outlines_vllm.server.reaper PARENT_PID REPLICA_ID``) waits for the replica to disappear and then
kills every process carrying its mark.
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


def marked_processes(replica: str | None = None) -> dict[int, str]:
    """``{pid: replica id}`` of this user's processes marked by a replica (or by ``replica``)."""
    found: dict[int, str] = {}
    prefix = f"{REPLICA_ENV}=".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                value = item[len(prefix) :].decode(errors="replace")
                if replica is None or value == replica:
                    found[int(proc.name)] = value
                break
    return found


def kill_marked(replica: str | None = None, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process marked by ``replica`` (every replica when None)."""
    pids = [pid for pid in marked_processes(replica) if pid != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return pids


def start_watchdog(replica: str) -> subprocess.Popen[bytes]:
    """A process that kills ``replica``'s engine processes once this process has died."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid()), replica],
        start_new_session=True,  # outlives the replica's process group
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    parent, replica = int(argv[0]), argv[1]
    while _alive(parent):
        time.sleep(1.0)
    kill_marked(replica)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
