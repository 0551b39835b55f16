"""The job spec: everything an offline job needs, from a YAML/JSON file and/or flags."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OfflineJobError
from .sources import check_output_source


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
            check_output_source(self.output_type, "the job's output type")
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
