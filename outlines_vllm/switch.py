"""One switch between a vLLM server and an embedded engine: ``load(target)``.

A URL gives an online model (``from_vllm`` over the openai SDK), a local model folder an
offline one (``from_vllm_offline`` over an engine started with this machine's safe defaults,
``launch.engine_kwargs``). Both answer the same calls, so application code does not change::

    model = outlines_vllm.load("http://127.0.0.1:8000")        # a server
    model = outlines_vllm.load("/models/SmolLM2-135M-Instruct")  # in this process
    model("Describe a pet.", Pet, max_tokens=128, temperature=0)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UnsupportedModelError
from .models.request import Endpoint


def load(
    target: str | os.PathLike[str],
    *,
    async_: bool = False,
    model_name: str | None = None,
    api_key: str | None = None,
    endpoint: Endpoint | None = None,
    **engine: Any,
) -> Any:
    """A model for ``target``: a server URL (``http(s)://host:port``, with or without ``/v1``) or
    a local model folder.

    ``async_=True`` gives the async twin (``AsyncVLLM`` / ``AsyncVLLMOffline``). Online,
    ``model_name`` picks the served model (default: the server's only one) and ``api_key`` the
    key (default ``$OPENAI_API_KEY``, else none). Offline, ``engine`` keywords go to
    ``vllm.LLM`` / the async engine on top of the CPU-safe defaults. ``endpoint`` is
    ``"chat"`` or ``"completions"`` (raw prompts) either way.
    """
    text = os.fspath(target)
    if text.startswith(("http://", "https://")):
        if engine:
            raise UnsupportedModelError(
                f"engine arguments {sorted(engine)} only apply to a local model folder, not to {text}"
            )
        return _online(text, async_=async_, model_name=model_name, api_key=api_key, endpoint=endpoint)
    if Path(text).is_dir():
        return _offline(Path(text), async_=async_, endpoint=endpoint, engine=engine)
    raise UnsupportedModelError(
        f"load() takes a server URL (http://host:port) or an existing local model folder; {text!r} "
        "is neither (for the default model run `outlines-vllm model path`)"
    )


def _online(
    url: str, *, async_: bool, model_name: str | None, api_key: str | None, endpoint: Endpoint | None
) -> Any:
    import openai

    from .models.online import from_vllm

    base_url = url.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    client_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    client = client_cls(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none")
    return from_vllm(client, model_name, endpoint=endpoint or "chat")


def _offline(path: Path, *, async_: bool, endpoint: Endpoint | None, engine: dict[str, Any]) -> Any:
    from .launch import engine_kwargs
    from .models.offline import from_vllm_offline

    kwargs = engine_kwargs(**engine)
    if async_:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return from_vllm_offline(
            AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(path), **kwargs)), endpoint=endpoint
        )
    from vllm import LLM

    return from_vllm_offline(LLM(str(path), **kwargs), endpoint=endpoint)
