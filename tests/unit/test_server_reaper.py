"""A replica's engine processes die with it, even when the replica is killed outright."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from outlines_vllm.server.reaper import kill_marked, marked_processes

# A stand-in replica: starts its watchdog, then an "engine" (a process group ignoring SIGTERM,
# with a child of its own, like vLLM's API server and engine core), then dies without cleaning up.
REPLICA = """
import os, subprocess, sys, time
from outlines_vllm.server.reaper import start_watchdog
print(start_watchdog(sys.argv[1]), flush=True)
engine = "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); subprocess.Popen(['sleep', '120']); time.sleep(120)"
env = {**os.environ, "OUTLINES_VLLM_REPLICA": sys.argv[1], "OUTLINES_VLLM_OWNER": sys.argv[2]}
subprocess.Popen([sys.executable, "-c", engine], env=env, start_new_session=True)
sys.stdin.readline()
os._exit(0)
"""


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_the_watchdog_kills_a_dead_replicas_engine_and_only_that() -> None:
    owner = uuid.uuid4().hex
    replicas = [f"r{uuid.uuid4().hex[:8]}", f"r{uuid.uuid4().hex[:8]}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, replica, owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for replica in replicas
    ]
    try:
        watchdogs = [int(p.stdout.readline()) for p in procs]
        assert wait_until(lambda: len(marked_processes(owner=owner)) == 4), marked_processes(owner=owner)
        assert set(marked_processes(owner=owner).values()) == set(replicas)
        assert marked_processes(owner="someone else") == {}
        procs[0].stdin.write("\n")
        procs[0].stdin.flush()
        procs[0].wait()
        # Replica 0 died: its engine (both processes) goes, replica 1's stays.
        assert wait_until(lambda: set(marked_processes(owner=owner).values()) == {replicas[1]})
        assert len(marked_processes(replicas[1], owner)) == 2
        assert wait_until(lambda: not _alive(watchdogs[0]))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        kill_marked(owner=owner)
    assert wait_until(lambda: marked_processes(owner=owner) == {})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
