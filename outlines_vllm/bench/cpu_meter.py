"""CPU time of the serving processes during a benchmark run.

A throughput ratio on a shared 2-core machine mixes what a layer costs with whatever else the
cores were doing. The CPU seconds each process spends, divided by the chunks it streamed, is
the layer's own cost: read from the kernel per process, it does not depend on the machine's
other jobs, and it is the figure that matters on a GPU, where the engine no longer dominates.
"""

from __future__ import annotations

import contextlib
import os

import psutil

# Machine-wide busy time (psutil.cpu_times fields that are not idle or waiting).
BUSY = ("user", "nice", "system", "irq", "softirq", "steal")


def listeners(port: int) -> list[psutil.Process]:
    """The processes listening on TCP ``port`` (any address)."""
    pids = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    return [psutil.Process(pid) for pid in sorted(pids)]


def _seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class CpuMeter:
    """CPU seconds per named group of processes, plus ``machine`` (all cores, busy time) and
    ``other`` (the machine less the groups: Ray's own processes, and any other job)."""

    def __init__(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self._last: dict[int, float] = {}

    @classmethod
    def for_serving(cls, direct_port: int, app_port: int) -> CpuMeter:
        """The serving benchmark's groups: ``replica`` (the process serving ``direct_port``: gate,
        Serve's ingress, vLLM's API server, the engine client), ``engine`` (its children: vLLM's
        engine core), ``proxy`` (what listens on ``app_port``: HAProxy or Serve's proxy) and
        ``client`` (this process, the load generator)."""
        replica = listeners(direct_port)
        engine = [child for parent in replica for child in parent.children(recursive=True)]
        proxy = [p for p in listeners(app_port) if p.pid not in {r.pid for r in replica}]
        return cls(
            {"replica": replica, "engine": engine, "proxy": proxy, "client": [psutil.Process(os.getpid())]}
        )

    def snapshot(self) -> dict[str, float]:
        """Cumulative CPU seconds per group now (a process that has exited keeps its last value)."""
        totals = {}
        for name, processes in self.groups.items():
            total = 0.0
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    self._last[process.pid] = _seconds(process)
                total += self._last.get(process.pid, 0.0)
            totals[name] = total
        machine = psutil.cpu_times()
        totals["machine"] = sum(getattr(machine, f, 0.0) for f in BUSY)
        return totals

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """CPU seconds per group (and ``other``) spent since ``before`` (a :meth:`snapshot`)."""
        now = self.snapshot()
        spent = {name: now[name] - before[name] for name in now}
        spent["other"] = spent["machine"] - sum(spent[name] for name in self.groups)
        return spent
