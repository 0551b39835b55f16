"""Offline jobs on real engines: output types and error records, SIGKILL then resume, and Ray Data
with two CPU replicas giving the same records as the local run.

The local runs use the session ``llm`` engine; the killed job is a real ``outlines-vllm offline
run`` subprocess (its own engine), and the Ray job starts two engine replicas: jobs stay tiny.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from outlines_vllm import from_vllm_offline
from outlines_vllm.launch import group_alive
from outlines_vllm.offline import make_spec, run_job

PET_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


# The extra engines these tests start need little KV cache (tiny jobs): keep the suite's memory low.
SMALL_KV_CACHE = 256 << 20


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def model(llm):
    return from_vllm_offline(llm)


def test_job_gives_each_line_its_output_type_and_malformed_lines_error_records(model, tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "pet", "prompt": "Describe a pet."},  # the job's schema
            {"id": "yes", "prompt": "Is ice cold?", "choices": ["yes", "no"]},
            {"id": "zip", "messages": [{"role": "user", "content": "A zip code."}], "regex": "[0-9]{5}"},
            '{"id": "torn", "prompt": "unterminated',
            {"id": "both", "prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            {"id": "badre", "prompt": "x", "regex": "("},
            {"id": "pet", "prompt": "A second line with the same id."},
            {"id": "short", "prompt": "Describe a pet.", "schema": PET_SCHEMA, "max_tokens": 1},
        ],
    )
    out = tmp_path / "out.jsonl"
    spec = make_spec(model="unused", input=source, output=out, schema=PET_SCHEMA, max_tokens=64)
    result = run_job(spec, model=model)

    records = {r["line"]: r for r in read_records(out)}
    assert sorted(records) == list(range(1, 9)) and result.written == 8
    assert records[1]["kind"] == "json" and set(records[1]["value"]) >= {"name", "age"}
    assert records[2]["kind"] == "choice" and records[2]["value"] in ("yes", "no")
    assert records[3]["kind"] == "regex" and len(records[3]["value"]) == 5
    assert (
        records[4]["error"]["type"] == "InvalidInputLine"
        and "not valid JSON" in records[4]["error"]["message"]
    )
    assert "exactly one of 'prompt'" in records[5]["error"]["message"]
    assert "invalid regex" in records[6]["error"]["message"]
    assert "duplicate id, first on line 1" in records[7]["error"]["message"]
    # An unknown per-line field is ignored, so line 8 is generated under the job's max_tokens.
    assert records[8]["kind"] == "json"
    assert result.errors == 4

    # Rerunning a finished job writes nothing and duplicates nothing.
    again = run_job(spec, model=model)
    assert again.written == 0 and again.skipped == 8
    assert len(read_records(out)) == 8


def test_sigkill_partway_then_rerun_gives_every_id_exactly_once(model, model_path, tmp_path):
    ids = [f"q{i:02d}" for i in range(16)]
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": i, "prompt": f"Describe pet number {i}."} for i in ids]
    )
    out = tmp_path / "out.jsonl"
    schema = tmp_path / "pet.json"
    schema.write_text(json.dumps(PET_SCHEMA))
    command = [
        sys.executable, "-m", "outlines_vllm.cli", "offline", "run",
        "--model", str(model_path), "--input", str(source), "--output", str(out),
        "--schema", str(schema), "--chunk-size", "2", "--max-tokens", "48",
        "--engine-arg", f"kv_cache_memory_bytes={SMALL_KV_CACHE}",
    ]  # fmt: skip
    log = (tmp_path / "job.log").open("wb")
    job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.2)
        assert job.poll() is None, (
            "the job ended before it could be killed:\n" + (tmp_path / "job.log").read_text()
        )
        os.killpg(job.pid, signal.SIGKILL)  # the job and its engine, with no chance to clean up
        job.wait()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    deadline = time.monotonic() + 30
    while group_alive(job.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(job.pid)

    before = read_records(out)
    assert 4 <= len(before) < len(ids)
    with out.open("ab") as handle:  # as if the kill had landed in the middle of a write
        handle.write(b'{"line": 16, "id": "q15", "te')

    spec = make_spec(
        model=str(model_path), input=source, output=out, schema=PET_SCHEMA, max_tokens=48, chunk_size=2
    )
    result = run_job(spec, model=model)
    assert result.skipped == len(before)
    counts = Counter(r["id"] for r in read_records(out))
    assert counts == Counter(ids), counts


def test_ray_data_with_two_cpu_replicas_gives_the_same_records_as_local(model, model_path, tmp_path):
    rows = [
        {"id": "a", "prompt": "Is fire hot?", "choices": ["yes", "no"]},
        {"id": "b", "prompt": "Describe a pet."},
        {"id": "c", "prompt": "An airport code.", "regex": "[A-Z]{3}"},
        "broken line",
        {"id": "e", "prompt": "Describe a cat."},
        {"id": "f", "prompt": "Pick a colour.", "choices": ["red", "green"]},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    options = {
        "model": str(model_path),
        "input": source,
        "schema": PET_SCHEMA,
        "max_tokens": 48,
        "chunk_size": 2,
    }

    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    run_job(make_spec(output=local_out, **options), model=model)
    small = {"kv_cache_memory_bytes": SMALL_KV_CACHE}
    result = run_job(make_spec(output=ray_out, ray=True, replicas=2, engine=small, **options))

    assert result.written == len(rows)

    def by_line(path: Path) -> list[dict]:
        return sorted(read_records(path), key=lambda r: r["line"])

    assert by_line(ray_out) == by_line(local_out)
    import ray

    assert not ray.is_initialized()
    # The replicas (and their engines) are gone soon after the job: nothing left running.
    deadline = time.monotonic() + 60
    while replica_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not replica_processes()


def replica_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-f", r"MapBatches\(_Replica\)"], capture_output=True, text=True)
    return found.stdout.split()
