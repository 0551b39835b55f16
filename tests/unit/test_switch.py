"""load() and from_vllm_offline() refuse what they cannot use, with what to pass instead; the
offline CLI parses its options. (The real switches run in tests/engine/test_parity.py.)"""

from __future__ import annotations

import pytest

from outlines_vllm import UnsupportedModelError, from_vllm_offline, load
from outlines_vllm.cli import build_parser


def test_load_refuses_a_target_that_is_neither_url_nor_folder(tmp_path):
    with pytest.raises(UnsupportedModelError, match="server URL"):
        load(tmp_path / "missing")
    with pytest.raises(UnsupportedModelError, match="server URL"):
        load("127.0.0.1:8000")  # no scheme: not taken for a URL


def test_load_refuses_engine_arguments_for_a_server():
    with pytest.raises(UnsupportedModelError, match="max_model_len"):
        load("http://127.0.0.1:8000", max_model_len=4096)


def test_load_builds_the_online_client_for_a_url():
    model = load("http://127.0.0.1:8000", model_name="m")
    assert str(model.client.base_url) == "http://127.0.0.1:8000/v1/"
    assert model.model_name == "m" and model.endpoint == "chat"


def test_from_vllm_offline_refuses_other_objects():
    with pytest.raises(UnsupportedModelError, match=r"vllm\.LLM"):
        from_vllm_offline(object())


def test_offline_run_parses_its_options():
    args = build_parser().parse_args(
        [
            "offline",
            "run",
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--choices",
            "a,b",
            "--ray",
            "--replicas",
            "2",
            "--gpus-per-replica",
            "1",
            "--engine-arg",
            "max_model_len=4096",
        ]
    )
    assert args.choices == ["a", "b"] and args.ray and args.replicas == 2 and args.gpus_per_replica == 1.0
    assert args.engine_args == ["max_model_len=4096"]
