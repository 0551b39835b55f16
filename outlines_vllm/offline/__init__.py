"""Offline batch jobs: JSONL in, JSONL out, resumable, locally or data-parallel on Ray Data."""

from .job import JobResult, run_job
from .spec import JobSpec, load_spec, make_spec

__all__ = ["JobResult", "JobSpec", "load_spec", "make_spec", "run_job"]
