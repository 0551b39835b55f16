import json
from pathlib import Path

from outlines_vllm import default_model


def test_model_dir_follows_the_environment_override(monkeypatch, tmp_path):
    monkeypatch.setenv(default_model.ENV_VAR, str(tmp_path / "m"))
    assert default_model.model_dir() == tmp_path / "m"


def test_model_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(default_model.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model.model_dir() == tmp_path / "outlines-vllm" / "models" / default_model.NAME


def _folder(tmp_path: Path, size: int) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    files = {"model.safetensors": {"size": size, "sha256": "unused"}}
    (tmp_path / default_model.MANIFEST).write_text(json.dumps({"files": files}))
    return tmp_path


def test_a_folder_matching_its_manifest_is_ready(tmp_path):
    assert default_model.is_ready(_folder(tmp_path, 10))


def test_a_half_written_folder_is_not_ready(tmp_path):
    assert not default_model.is_ready(_folder(tmp_path, 11))
    (tmp_path / default_model.MANIFEST).unlink()
    assert not default_model.is_ready(tmp_path)


def test_prepare_reuses_a_ready_folder_without_converting(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 10)
    monkeypatch.setattr(
        default_model, "_fetch_gguf", lambda _: (_ for _ in ()).throw(AssertionError("fetched"))
    )
    assert default_model.prepare(folder) == folder
