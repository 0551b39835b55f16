"""A process pool for work that may hang or crash the process running it (grammar compilers).

``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when one worker dies
(an xgrammar segfault) and cannot stop a task that hangs. Here each worker runs one task at a
time; a task whose worker dies is a ``crash``, a task over its time limit is a ``timeout`` and
its worker is killed; either way a fresh worker takes the slot and the run goes on.

The time limit counts the worker's CPU time (Linux ``/proc``), so a loaded, shared machine
does not turn slow compiles into time-outs; a wall-clock backstop (``wall_factor`` times the
limit, plus a grace) still stops a task that waits forever without using the CPU. The clocks
start when the worker has unpickled the task (imported its module), so a replacement
worker's start-up is not charged to the task (``startup`` seconds bound that phase).

Workers come from a fork server that has imported ``preload`` (heavy modules) once, so a
replacement worker starts in milliseconds rather than re-importing torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Outcome:
    """What happened to one task: ``ok`` (``value`` is the result), ``error`` (the function
    raised: ``error`` holds the traceback's last line), ``timeout`` or ``crash``."""

    index: int
    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def _serve(conn: Connection, quiet: bool) -> None:
    """A worker's loop: run ``fn(arg)`` for each task received, send back the result."""
    if quiet:  # compilers print warnings straight to fd 1/2; keep the progress bar readable
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        fn, arg = message  # unpickled: the function's module is imported by now
        conn.send(("started", None))
        try:
            conn.send(("ok", fn(arg)))
        except Exception as exc:  # the task's failure, reported, never the worker's end
            conn.send(("error", "".join(traceback.format_exception_only(exc)).strip()[-500:]))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    def __init__(self, ctx: Any, quiet: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, quiet), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None
        self.started = self.begun = 0.0
        self.cpu_start: float | None = None

    def give(self, index: int, fn: Callable[[Any], Any], arg: Any) -> None:
        self.task = index
        self.started = time.monotonic()
        self.cpu_start = None  # set when the worker starts the task (after its imports)
        self.conn.send((fn, arg))

    def begin(self) -> None:
        self.cpu_start = cpu_seconds(self.process.pid)
        self.begun = time.monotonic()

    def used(self) -> float:
        """Seconds the current task has used: CPU time where known, else wall time."""
        if self.cpu_start is None:
            return 0.0  # still unpickling the task: the wall-clock backstop covers this
        cpu = cpu_seconds(self.process.pid)
        return cpu - self.cpu_start if cpu is not None else time.monotonic() - self.begun

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
        self.conn.close()


class WorkerPool:
    """``workers`` processes that run ``fn(arg)`` tasks, each under ``timeout`` seconds.

    Use as a context manager; ``run`` yields an :class:`Outcome` per task as tasks finish.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        preload: Sequence[str] = (),
        quiet: bool = False,
        wall_factor: float = 4.0,
        grace: float = 30.0,
        poll: float = 0.1,
        startup: float = 300.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.ctx = multiprocessing.get_context("forkserver")
        if preload:
            self.ctx.set_forkserver_preload(list(preload))
        self.size, self.quiet = workers, quiet
        self.wall_factor, self.grace, self.poll, self.startup = wall_factor, grace, poll, startup
        self.workers: list[_Worker] = []
        self.restarts = 0

    def __enter__(self) -> WorkerPool:
        self.workers = [_Worker(self.ctx, self.quiet) for _ in range(self.size)]
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
        _stop_fork_server()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.ctx, self.quiet)
        self.restarts += 1

    def run(
        self, fn: Callable[[Any], Any], args: Iterable[Any], timeout: float | Callable[[Any], float]
    ) -> Iterator[Outcome]:
        """Run ``fn`` on every arg (``fn`` must be importable: a module-level function);
        ``timeout`` is seconds, or a function of the arg giving them."""
        limit = timeout if callable(timeout) else (lambda _arg, t=timeout: t)
        pending = enumerate(args)  # read lazily: a caller's generator may stop early
        busy: dict[int, tuple[_Worker, float]] = {}  # id(worker) -> (worker, limit)
        while pending is not None or busy:
            for worker in self.workers:
                if pending is not None and worker.task is None:
                    if (item := next(pending, None)) is None:
                        pending = None
                        break
                    worker.give(item[0], fn, item[1])
                    busy[id(worker)] = (worker, limit(item[1]))
            conns = {worker.conn: worker for worker, _ in busy.values()}
            sentinels = {worker.process.sentinel: worker for worker, _ in busy.values()}
            ready = wait([*conns, *sentinels], timeout=self.poll)
            finished: set[int] = set()
            for handle in ready:
                worker = conns.get(handle) or sentinels[handle]
                if id(worker) in finished:
                    continue
                finished.add(id(worker))
                if (outcome := self._collect(worker)) is not None:
                    del busy[id(worker)]
                    yield outcome
            for key, (worker, seconds) in list(busy.items()):
                now = time.monotonic()
                wall = now - worker.started
                if worker.cpu_start is None:  # a new worker still starting: its imports are not the task's
                    over = wall > self.startup
                else:
                    over = (
                        worker.used() > seconds
                        or now - worker.begun > seconds * self.wall_factor + self.grace
                    )
                if over:
                    index = worker.task
                    del busy[key]
                    self._replace(worker)
                    yield Outcome(index, "timeout", seconds=wall)

    def _collect(self, worker: _Worker) -> Outcome | None:
        """The outcome of ``worker``'s task, or None when it only said it started."""
        index = worker.task
        wall = time.monotonic() - worker.started
        try:
            if worker.conn.poll():
                status, payload = worker.conn.recv()
                if status == "started":
                    worker.begin()
                    return None
                worker.task = None
                if status == "ok":
                    return Outcome(index, "ok", value=payload, seconds=wall)
                return Outcome(index, "error", error=payload, seconds=wall)
        except (EOFError, OSError):
            pass
        worker.process.join(5)
        code = worker.process.exitcode
        self._replace(worker)
        return Outcome(index, "crash", error=f"worker died (exit code {code})", seconds=wall)


def _stop_fork_server() -> None:
    """Kill this process's fork server: warmed with compiler threads, it may not exit on its own
    when we do, and the next pool may want another ``preload``. The next ``ensure_running``
    reaps it and starts a new one."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped (see above)
