"""Data-parallel offline jobs on Ray Data: ``replicas`` engine actors, each on
``gpus_per_replica`` GPUs, share the pending items; the driver writes every record itself.

Each row of the dataset is one chunk of items, as JSON text (schemas differ line by line, which
Arrow columns could not hold), in a block of its own so every replica gets work; a replica
turns a chunk into its records in one engine call, exactly the call local mode makes for that
chunk. Records stream back to the driver as chunks finish and are appended as in local mode, so
resuming, progress and the records themselves are the same.

Without a GPU (tests, laptops) each replica binds its engine's compute threads to a CPU core of
its own, claimed with a lock file, so two replicas do not fight over one core.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from ..errors import OfflineJobError
from .generation import generate_records, load_model
from .input_lines import Item
from .spec import JobSpec

OBJECT_STORE_BYTES = 128 << 20  # items and records are small; keep Ray's shared memory modest


def run_on_ray(spec: JobSpec, pending: list[Item], sink: Callable[[list[dict[str, Any]]], None]) -> None:
    """Generate records for ``pending`` on ``spec.replicas`` Ray actors, handing each finished
    chunk to ``sink`` as it arrives."""
    import ray
    import ray.data

    from ..launch import has_gpu

    if spec.gpus_per_replica and not spec.ray_address and not has_gpu():
        # A local Ray here has no GPU: the replicas would wait for one forever.
        raise OfflineJobError(
            "gpus_per_replica > 0 but this machine has no GPU; use --gpus-per-replica 0 (CPU "
            "replicas) or --ray-address to run on a cluster with GPUs"
        )
    started = not ray.is_initialized()
    if started:
        _init_ray(spec)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts records
        chunks = [pending[i : i + spec.chunk_size] for i in range(0, len(pending), spec.chunk_size)]
        rows = [{"chunk": json.dumps([dataclasses.asdict(item) for item in chunk])} for chunk in chunks]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        records = dataset.map_batches(
            _Replica,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            batch_format="numpy",
            concurrency=spec.replicas,
            num_cpus=1,
            num_gpus=spec.gpus_per_replica or None,
        )
        for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
            for chunk_records in batch["records"]:
                sink(json.loads(chunk_records))
    finally:
        if started:
            ray.shutdown()


def _init_ray(spec: JobSpec) -> None:
    import ray

    if spec.ray_address:
        ray.init(address=spec.ray_address, log_to_driver=False)
        return
    # A new local Ray for this job alone (never a cluster someone else started on this
    # machine): enough logical CPUs for the replicas plus Ray Data's own tasks, a small
    # object store, no dashboard.
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, spec.replicas + 1),
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
    )


class _Replica:
    """One engine, loaded once per actor, turning chunks of items into records."""

    def __init__(self, spec: JobSpec) -> None:
        from ..launch import has_gpu

        if not has_gpu():
            self._core_lock = _claim_cpu_core()
        self.spec = spec
        self.model = load_model(spec)

    def __del__(self) -> None:
        # Ray Data drops the UDF when the actor exits gracefully: stop the engine with it.
        if model := getattr(self, "model", None):
            model.close()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for chunk in batch["chunk"]:
            items = [Item(**fields) for fields in json.loads(chunk)]
            out.append(json.dumps(generate_records(self.model, items, self.spec), ensure_ascii=False))
        return {"records": np.array(out, dtype=object)}


def _claim_cpu_core() -> Any:
    """Bind this process's future engine to the first CPU core no other replica holds (the
    lock lives as long as the returned file); returns None when every core is taken."""
    for core in sorted(os.sched_getaffinity(0)):
        handle = open(os.path.join(tempfile.gettempdir(), f"outlines-vllm-core-{core}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        return handle
    return None
