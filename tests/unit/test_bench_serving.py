"""``bench serving``'s CPU accounting: processes found by the port they listen on, their CPU
time read per run, and the per-chunk cost of each path compared within a repeat."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from outlines_vllm.bench import serving
from outlines_vllm.bench.cpu_meter import CpuMeter, listeners

# Listens on a free port, prints it, then keeps one core busy until killed.
BUSY_SERVER = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
while True:
    pass
"""


def test_the_meter_finds_a_listening_process_and_reads_the_cpu_it_spends() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        assert [p.pid for p in listeners(port)] == [child.pid]
        meter = CpuMeter({"server": listeners(port)})
        before = meter.snapshot()
        time.sleep(1.0)
        spent = meter.since(before)
        assert spent["server"] > 0.2  # a busy loop, even on a shared core
        assert spent["machine"] >= spent["server"]
        assert abs(spent["other"] - (spent["machine"] - spent["server"])) < 1e-9
    finally:
        child.kill()
        child.wait()
    assert listeners(port) == []
    with socket.socket() as idle:  # bound but not listening: not a listener
        idle.bind(("127.0.0.1", 0))
        assert listeners(idle.getsockname()[1]) == []


def _run(path: str, repeat: int, chunks: int, replica_s: float, proxy_s: float) -> dict:
    return {
        "path": path, "concurrency": 4, "repeat": repeat, "order": 0, "sent": 2, "succeeded": 2,
        "chunks": chunks, "cpu_s": {"replica": replica_s, "proxy": proxy_s},
        **{metric: 1.0 for metric in serving.METRICS},
    }  # fmt: skip


def test_cpu_per_chunk_is_compared_within_each_repeat() -> None:
    runs = [
        _run("direct", 0, 1000, 0.100, 0.0),  # 100 µs per chunk
        _run("app", 0, 1000, 0.130, 0.020),  # 130 µs, and the proxy 20 µs
        _run("direct", 1, 2000, 0.300, 0.0),  # 150 µs
        _run("app", 1, 1000, 0.170, 0.010),  # 170 µs
    ]
    (row,) = serving.compare(runs)
    replica, proxy = row["cpu_us_per_chunk"]["replica"], row["cpu_us_per_chunk"]["proxy"]
    assert replica["direct"]["median"] == 125.0
    assert replica["delta"]["min"] == 20.0 and replica["delta"]["max"] == 30.0
    assert proxy["delta"]["median"] == 15.0
    text = serving.markdown(
        {
            "label": "tiny", "model_kind": "tiny", "model_name": "tiny", "design": "d", "command": "c",
            "environment": {"vllm_version": "0", "device": "cpu", "cpu_count": 2},
            "plan": {"prompt_words": 4, "max_tokens": 4, "requests": {}, "repeats": 2},
            "comparison": [row], "goals": [],
        }
    )  # fmt: skip
    assert "## CPU per streamed chunk" in text
    assert "| 4 | replica | 125 (100-150) | 150 (130-170) | 25 (20-30) |" in text
