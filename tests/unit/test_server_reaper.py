"""Engine processes are found by the replica mark they inherit (psutil), and only theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from outlines_vllm.server.reaper import OWNER_ENV, REPLICA_ENV, kill_marked, marked_processes


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_marked_engine_processes_are_found_by_replica_and_owner_and_killed() -> None:
    owner = uuid.uuid4().hex
    replicas = [f"r{uuid.uuid4().hex[:8]}", f"r{uuid.uuid4().hex[:8]}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            env={**os.environ, REPLICA_ENV: replica, OWNER_ENV: owner},
        )
        for replica in replicas
    ]
    try:
        assert wait_until(lambda: len(marked_processes(owner=owner)) == 2), marked_processes(owner=owner)
        assert set(marked_processes(owner=owner).values()) == set(replicas)
        assert marked_processes(owner="someone else") == {}
        assert kill_marked(replicas[0], owner) == [procs[0].pid]
        procs[0].wait(timeout=10)
        assert wait_until(lambda: set(marked_processes(owner=owner).values()) == {replicas[1]})
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert wait_until(lambda: marked_processes(owner=owner) == {})
