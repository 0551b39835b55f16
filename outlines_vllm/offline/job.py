"""Offline batch jobs: JSONL prompts in, JSONL records out, resumable, with a progress bar.

Input, one JSON object per line::

    {"id": "a1", "prompt": "Describe a cat."}
    {"id": "a2", "messages": [{"role": "user", "content": "Pick a colour."}], "choices": ["red", "blue"]}

``id`` defaults to the line number. A line may carry its own output type (``schema``, ``regex``,
``choices``, ``grammar`` or ``"json_object": true``); otherwise the job's applies, and with none
the text is free. Output, one record per input line::

    {"line": 1, "id": "a1", "kind": "json", "text": "{...}", "value": {...}}
    {"line": 3, "id": null, "error": {"type": "InvalidInputLine", "message": "..."}}

Crash safety: records are appended in whole lines (one ``write`` per chunk, then ``fsync``), and
a rerun reads the line numbers already done, cuts off a torn last line, and processes only the
rest, so after a crash (even ``kill -9``) no record is lost or written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OfflineJobError, OutlinesVLLMError

# Keys of an input line that give its own output type, and the job options that give one for all.
OUTPUT_KEYS = ("schema", "regex", "choices", "grammar", "json_object")


@dataclass
class JobSpec:
    """Everything a job needs; read from a YAML/JSON spec file and/or command-line flags."""

    model: str  # a local model folder (make_spec: the default model when not given)
    input: Path
    output: Path
    output_type: dict[str, Any] | None = None  # one of OUTPUT_KEYS -> its value, for every line
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = 0
    chunk_size: int = 16
    endpoint: str | None = (
        None  # "chat" or "completions" (raw prompts); default: chat if the model has a template
    )
    engine: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM / engine arguments
    ray: bool = False
    replicas: int = 1
    gpus_per_replica: float = 0.0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        self.input, self.output = Path(self.input), Path(self.output)
        if self.output_type is not None:
            _check_output_source(self.output_type, "the job's output type")
        if self.chunk_size < 1 or self.max_tokens < 1 or self.replicas < 1:
            raise OfflineJobError("chunk_size, max_tokens and replicas must be at least 1")

    @property
    def sampling(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}


def load_spec(path: str | os.PathLike[str], **overrides: Any) -> JobSpec:
    """A JobSpec from a YAML or JSON file (relative paths resolve against the file's folder),
    with ``overrides`` (non-None values) on top."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OfflineJobError(f"cannot read the job spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise OfflineJobError(f"the job spec {path} must be a mapping of options")
    for key in ("input", "output", "schema_file"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    if "model" in data and (path.parent / data["model"]).is_dir() and not Path(data["model"]).is_absolute():
        data["model"] = str(path.parent / data["model"])
    data.update({key: value for key, value in overrides.items() if value is not None})
    return make_spec(**data)


def make_spec(
    *,
    schema_file: str | None = None,
    schema: Any = None,
    regex: str | None = None,
    choices: Sequence[str] | None = None,
    grammar: str | None = None,
    json_object: bool = False,
    **options: Any,
) -> JobSpec:
    """A JobSpec from flat options; at most one of the output-type options may be given."""
    if schema_file is not None:
        try:
            schema = json.loads(Path(schema_file).read_text())
        except (OSError, ValueError) as exc:
            raise OfflineJobError(f"cannot read the JSON schema file {schema_file}: {exc}") from exc
    given = {
        key: value
        for key, value in (("schema", schema), ("regex", regex), ("choices", choices), ("grammar", grammar))
        if value is not None
    }
    if json_object:
        given["json_object"] = True
    if len(given) > 1:
        raise OfflineJobError(f"give one output type for the job, got {sorted(given)}")
    unknown = set(options) - {f.name for f in dataclasses.fields(JobSpec)}
    if unknown:
        raise OfflineJobError(f"unknown job options {sorted(unknown)}")
    if "choices" in given:
        given["choices"] = list(given["choices"])
    if options.get("model") is None:
        from ..default_model import prepare

        options["model"] = str(prepare())
    try:
        return JobSpec(output_type=given or None, **options)
    except TypeError as exc:
        raise OfflineJobError(f"incomplete job spec: {exc} (input and output are required)") from exc


# --- input ------------------------------------------------------------------------------------


@dataclass
class Item:
    """One valid input line, in a form that travels (JSON) to Ray replicas."""

    line: int
    id: Any
    prompt: Any  # a string or a list of messages
    output: dict[str, Any] | None  # one of OUTPUT_KEYS -> value, or None for free text


def read_input(spec: JobSpec) -> Iterator[Item | dict[str, Any]]:
    """Each input line as an Item, or as an error record when it cannot be used."""
    try:
        handle = spec.input.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise OfflineJobError(f"cannot read the input file {spec.input}: {exc}") from exc
    seen: dict[Any, int] = {}
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = parse_line(number, raw, spec.output_type)
            except _BadLine as bad:
                yield error_record(number, bad.id, "InvalidInputLine", str(bad))
                continue
            key = json.dumps(item.id)
            if key in seen:
                yield error_record(
                    number, item.id, "InvalidInputLine", f"duplicate id, first on line {seen[key]}"
                )
                continue
            seen[key] = number
            yield item


class _BadLine(Exception):
    def __init__(self, reason: str, id_: Any = None) -> None:
        super().__init__(reason)
        self.id = id_


def parse_line(number: int, raw: str, default_output: dict[str, Any] | None) -> Item:
    """An input line as an Item; raises _BadLine with the reason when it cannot be used."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _BadLine(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadLine(f"a line must be a JSON object, got {type(data).__name__}")
    id_ = data.get("id", number)
    if not isinstance(id_, str | int) or isinstance(id_, bool):
        raise _BadLine(f"id must be a string or an integer, got {json.dumps(id_)}")
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        raise _BadLine("give exactly one of 'prompt' (a string) or 'messages' (a list)", id_)
    prompt = data["prompt"] if has_prompt else data["messages"]
    try:
        from ..models.prompts import to_messages

        to_messages(prompt)
    except OutlinesVLLMError as exc:
        raise _BadLine(str(exc), id_) from None
    own = {key: data[key] for key in OUTPUT_KEYS if key in data}
    if len(own) > 1:
        raise _BadLine(f"give at most one output type per line, got {sorted(own)}", id_)
    output = own or default_output
    if output is not None:
        try:
            _check_output_source(output, "this line's output type")
        except OfflineJobError as exc:
            raise _BadLine(str(exc), id_) from None
    return Item(number, id_, prompt, output)


def _check_output_source(source: dict[str, Any], what: str) -> None:
    try:
        output_type_of(json.dumps(source, sort_keys=True))
    except (OutlinesVLLMError, TypeError, ValueError) as exc:
        raise OfflineJobError(f"{what} is invalid: {exc}") from None


@functools.lru_cache(maxsize=1024)
def output_type_of(source_json: str) -> Any:
    """The OutputSpec an output-type source (``{"regex": ...}`` etc., as JSON) stands for."""
    from ..types import CFG, Choice, JsonObject, JsonSchema, Regex, output_spec

    source = json.loads(source_json)
    if source is None:
        return output_spec(None)
    ((key, value),) = source.items()
    if key == "schema":
        return output_spec(JsonSchema(value))
    if key == "regex":
        return output_spec(Regex(_need(value, str, key)))
    if key == "choices":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise OfflineJobError("choices must be a non-empty list of strings")
        return output_spec(Choice(value))
    if key == "grammar":
        return output_spec(CFG(_need(value, str, key)))
    if key == "json_object" and value is True:
        return output_spec(JsonObject)
    raise OfflineJobError(f"unknown output type {key}={value!r}; use one of {', '.join(OUTPUT_KEYS)}")


def _need(value: Any, kind: type, key: str) -> Any:
    if not isinstance(value, kind):
        raise OfflineJobError(f"{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


# --- generation (shared by the local runner and the Ray replicas) ------------------------------


def generate_records(model: Any, items: Sequence[Item], spec: JobSpec) -> list[dict[str, Any]]:
    """One record per item, from ONE batch call on ``model`` (each item its own output type)."""
    specs = [output_type_of(json.dumps(item.output, sort_keys=True)) for item in items]
    options = {"endpoint": spec.endpoint} if spec.endpoint else {}
    texts = model.batch(
        [item.prompt for item in items],
        specs,
        return_exceptions=True,
        progress=False,
        **options,
        **spec.sampling,
    )
    records = []
    for item, out_spec, text in zip(items, specs, texts, strict=True):
        if isinstance(text, Exception):
            record = error_record(item.line, item.id, type(text).__name__, str(text))
            if getattr(text, "text", None) is not None:
                record["text"] = text.text
        else:
            record = {
                "line": item.line,
                "id": item.id,
                "kind": out_spec.kind,
                "text": text,
                "value": out_spec.parse(text),
            }
        records.append(record)
    return records


def error_record(line: int, id_: Any, kind: str, message: str) -> dict[str, Any]:
    return {"line": line, "id": id_, "error": {"type": kind, "message": message}}


# --- output -----------------------------------------------------------------------------------


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


# --- the job ----------------------------------------------------------------------------------


@dataclass
class JobResult:
    total: int  # records in the output after the run
    written: int  # records written by this run
    errors: int  # error records written by this run
    skipped: int  # records found done from an earlier run


def run_job(spec: JobSpec, model: Any = None) -> JobResult:
    """Run (or resume) a job: locally on ``model`` (or a model loaded from ``spec.model``), or
    on Ray Data replicas when ``spec.ray``. Progress goes to stderr as a tqdm bar."""
    from tqdm import tqdm

    if model is None and not Path(spec.model).is_dir():
        raise OfflineJobError(
            f"model {spec.model!r} is not a local model folder; offline jobs embed the engine "
            "(for a server, use model.batch on outlines_vllm.load(url))"
        )
    done = read_done(spec.output)
    pending: list[Item] = []
    bad: list[dict[str, Any]] = []
    total = 0
    for entry in read_input(spec):
        total += 1
        line = entry.line if isinstance(entry, Item) else entry["line"]
        if line in done:
            expected = entry.id if isinstance(entry, Item) else entry["id"]
            if done[line] != expected:
                raise OfflineJobError(
                    f"the output {spec.output} has id {done[line]!r} for input line {line}, whose id is "
                    f"{expected!r}: it belongs to another input; use a new output file"
                )
            continue
        (pending if isinstance(entry, Item) else bad).append(entry)

    result = JobResult(total=len(done), written=0, errors=0, skipped=len(done))
    with contextlib.ExitStack() as stack:
        if model is None and pending and not spec.ray:
            model = load_model(spec)  # before the bar starts, so its rate and ETA count generation only
            stack.callback(model.close)
        writer = stack.enter_context(RecordWriter(spec.output))
        bar = stack.enter_context(
            tqdm(total=total, initial=len(done), unit="rec", desc="offline job", dynamic_ncols=True)
        )

        def sink(records: list[dict[str, Any]]) -> None:
            writer.write(records)
            result.written += len(records)
            result.errors += sum("error" in r for r in records)
            bar.update(len(records))

        if bad:
            sink(bad)
        if pending and spec.ray:
            from .ray_runner import run_on_ray

            run_on_ray(spec, pending, sink)
        elif pending:
            for start in range(0, len(pending), spec.chunk_size):
                sink(generate_records(model, pending[start : start + spec.chunk_size], spec))
    result.total += result.written
    return result


def load_model(spec: JobSpec) -> Any:
    """The job's engine: ``spec.model`` (a local folder) through :func:`outlines_vllm.load`."""
    from ..switch import load

    return load(spec.model, **spec.engine)
