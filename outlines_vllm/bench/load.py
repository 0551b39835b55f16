"""Load generation: the first request alone, warm-up requests that are not counted, then the
measured requests, either under a concurrency limit (closed loop) or arriving as a Poisson
process at a fixed rate (open loop). Arrival times and per-request seeds come from the run's
seed, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from .paths import Record
from .workloads import Request, Workload

SendOne = Callable[[Request, int], Awaitable[Record]]
SendBatch = Callable[[Sequence[Request]], list[Record]]


@dataclass
class Measured:
    """The raw outcome of one run: the first request, the measured ones, and the wall time."""

    first: Record
    records: list[Record]
    duration: float


def arrivals(n: int, rate: float | None, seed: int) -> list[float]:
    """Send offsets in seconds: all at once without a rate, else Poisson arrivals at ``rate``/s."""
    if not rate:
        return [0.0] * n
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def run_online(
    send: SendOne,
    workload: Workload,
    *,
    concurrency: int,
    rate: float | None = None,
    seed: int = 0,
    desc: str = "",
) -> Measured:
    """Drive one online run; request ``i`` of the run uses seed ``seed + i``."""
    first = await send(workload.first, seed)
    limit = asyncio.Semaphore(concurrency)

    async def one(request: Request, request_seed: int, delay: float, bar: tqdm | None) -> Record:
        await asyncio.sleep(delay)
        async with limit:
            record = await send(request, request_seed)
        if bar is not None:
            bar.update()
        return record

    await asyncio.gather(*(one(r, seed + 1 + i, 0.0, None) for i, r in enumerate(workload.warmup)))
    offsets = arrivals(len(workload.measured), rate, seed)
    base = seed + 1 + len(workload.warmup)
    with tqdm(total=len(workload.measured), desc=desc, leave=False, unit="req") as bar:
        start = time.perf_counter()
        records = await asyncio.gather(
            *(one(r, base + i, offsets[i], bar) for i, r in enumerate(workload.measured))
        )
        duration = time.perf_counter() - start
    return Measured(first, list(records), duration)


def run_offline(send: SendBatch, workload: Workload) -> Measured:
    """Drive one offline run: the first request alone, the warm-up batch, the measured batch."""
    (first,) = send([workload.first])
    if workload.warmup:
        send(workload.warmup)
    start = time.perf_counter()
    records = send(workload.measured)
    return Measured(first, records, time.perf_counter() - start)
