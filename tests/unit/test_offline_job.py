"""Offline jobs without an engine: input lines, job specs, crash-safe output and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outlines_vllm import OfflineJobError
from outlines_vllm.offline.input_lines import Item, _BadLine, parse_line, read_input
from outlines_vllm.offline.job import run_job
from outlines_vllm.offline.records import RecordWriter, read_done
from outlines_vllm.offline.sources import output_type_of
from outlines_vllm.offline.spec import load_spec, make_spec


def test_parse_line_reads_id_prompt_messages_and_own_output_type():
    item = parse_line(3, '{"id": "a", "prompt": "Hi", "regex": "[0-9]+"}', None)
    assert item == Item(3, "a", "Hi", {"regex": "[0-9]+"})
    messages = [{"role": "user", "content": "Pick"}]
    item = parse_line(4, json.dumps({"messages": messages}), {"choices": ["x", "y"]})
    assert item == Item(4, 4, messages, {"choices": ["x", "y"]})  # id defaults to the line number


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": 1, "prompt": "x"', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"id": 1}', "exactly one of 'prompt'"),
        ('{"id": 1, "prompt": "x", "messages": []}', "exactly one of 'prompt'"),
        ('{"id": [1], "prompt": "x"}', "id must be a string or an integer"),
        ('{"id": 1, "messages": [{"role": "user"}]}', "'role' and 'content'"),
        ('{"id": 1, "prompt": "x", "regex": "[", "choices": ["a"]}', "at most one output type"),
        ('{"id": 1, "prompt": "x", "regex": "("}', "invalid regex"),
        ('{"id": 1, "prompt": "x", "schema": {"type": "nonsense"}}', "invalid JSON schema"),
        ('{"id": 1, "prompt": "x", "choices": []}', "non-empty list"),
    ],
)
def test_a_bad_line_names_its_reason(line, reason):
    with pytest.raises(_BadLine, match=reason):
        parse_line(1, line, None)


def test_read_input_turns_bad_and_duplicate_lines_into_error_records(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\nnot json\n\n{"id": "a", "prompt": "y"}\n')
    spec = make_spec(model="m", input=path, output=tmp_path / "out.jsonl")
    entries = list(read_input(spec))
    assert isinstance(entries[0], Item)
    assert entries[1]["line"] == 2 and entries[1]["error"]["type"] == "InvalidInputLine"
    assert entries[2]["line"] == 4 and "duplicate id, first on line 1" in entries[2]["error"]["message"]


def test_read_done_cuts_a_torn_last_line_and_keeps_whole_ones(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordWriter(path) as writer:
        writer.write([{"line": 1, "id": "a"}, {"line": 2, "id": "b"}])
    with path.open("ab") as handle:
        handle.write(b'{"line": 3, "id": "c", "te')  # a crash in the middle of a write
    assert read_done(path) == {1: "a", 2: "b"}
    assert path.read_bytes().endswith(b'"b"}\n')
    with RecordWriter(path) as writer:
        writer.write([{"line": 3, "id": "c"}])
    assert read_done(path) == {1: "a", 2: "b", 3: "c"}


def test_read_done_refuses_an_output_that_is_not_ours(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"line": 1, "id": "a"}\nhello\n{"line": 2, "id": "b"}\n')
    with pytest.raises(OfflineJobError, match="line 2 of the output"):
        read_done(path)


def test_spec_file_resolves_paths_and_flags_override(tmp_path):
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        "model: /m\ninput: in.jsonl\noutput: out.jsonl\nschema_file: schema.json\nmax_tokens: 64\n"
    )
    spec = load_spec(spec_path, max_tokens=32, temperature=None)
    assert spec.input == tmp_path / "in.jsonl" and spec.output == tmp_path / "out.jsonl"
    assert spec.output_type == {"schema": {"type": "object"}}
    assert spec.max_tokens == 32 and spec.temperature == 0.0


def test_spec_refuses_two_output_types_and_unknown_options(tmp_path):
    with pytest.raises(OfflineJobError, match="one output type"):
        make_spec(model="m", input="i", output="o", regex="a", choices=["b"])
    with pytest.raises(OfflineJobError, match="unknown job options"):
        make_spec(model="m", input="i", output="o", replica=2)


def test_output_sources_become_the_shared_output_types():
    assert output_type_of(json.dumps({"choices": ["a", "b"]})).constraint.value == ["a", "b"]
    assert output_type_of(json.dumps({"regex": "[0-9]"})).kind == "regex"
    assert output_type_of(json.dumps({"json_object": True})).kind == "json_object"
    assert output_type_of(json.dumps({"schema": {"type": "object"}})).kind == "json"
    assert output_type_of("null").constraint is None


def test_example_job_specs_load(tmp_path):
    folder = Path(__file__).resolve().parents[2] / "offline"
    for spec_path in sorted(folder.glob("jobs/*.yaml")):
        spec = load_spec(spec_path, model=str(tmp_path))
        assert spec.input.exists(), spec_path


def test_ray_mode_refuses_gpus_on_a_machine_without_one(tmp_path):
    from outlines_vllm.launch import has_gpu
    from outlines_vllm.offline.ray_runner import run_on_ray

    if has_gpu():
        pytest.skip("this machine has a GPU")
    spec = make_spec(model="m", input=tmp_path / "i", output=tmp_path / "o", ray=True, gpus_per_replica=1)
    with pytest.raises(OfflineJobError, match="no GPU"):
        run_on_ray(spec, [Item(1, 1, "x", None)], lambda records: None)


def test_a_job_needs_a_local_model_folder(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    spec = make_spec(model="http://127.0.0.1:8000", input=source, output=tmp_path / "out.jsonl")
    with pytest.raises(OfflineJobError, match="not a local model folder"):
        run_job(spec)
    assert not (tmp_path / "out.jsonl").exists()


def test_the_offline_modules_import_each_other_without_a_cycle():
    import ast

    import outlines_vllm.offline as package

    folder = Path(package.__file__).parent
    modules = {path.stem: path for path in folder.glob("*.py")}
    imports = {
        name: {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in modules
        }
        for name, path in modules.items()
    }

    def reach(name: str, path: tuple[str, ...]) -> None:
        for dep in imports[name]:
            assert dep not in path, f"import cycle: {' -> '.join((*path, dep))}"
            reach(dep, (*path, dep))

    for name in imports:
        reach(name, (name,))
