"""The output file of a job and how it resumes: records are appended in whole lines (one
``write`` per chunk, then ``fsync``), and a rerun reads the line numbers already done and cuts
off a torn last line, so after a crash (even ``kill -9``) no record is lost or written twice."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import OfflineJobError


def error_record(line: int, id_: Any, kind: str, message: str) -> dict[str, Any]:
    return {"line": line, "id": id_, "error": {"type": kind, "message": message}}


def read_done(path: Path) -> dict[int, Any]:
    """Input line number -> id for every record already in the output; cuts off a torn last
    line (a crash mid-write) so appending continues on a line boundary."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    done: dict[int, Any] = {}
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        try:
            record = json.loads(raw)
            done[int(record["line"])] = record.get("id")
        except (ValueError, KeyError, TypeError) as exc:
            raise OfflineJobError(
                f"line {number} of the output {path} is not a record of this tool ({exc}); "
                "write to a new output file or remove that line"
            ) from None
    return done


class RecordWriter:
    """Appends records as whole lines: one write per batch, then fsync."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
