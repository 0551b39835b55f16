"""Worker side of ``bench coverage``: compile one constraint the way one vLLM backend does.

Runs inside :mod:`.workerpool` workers only. Each backend is mirrored from vLLM 0.32's
``vllm/v1/structured_output/backend_*.py``: vLLM's own request check first (the function vLLM
calls before accepting a request for that backend), then the same compile call on the same
tokenizer. Differences, on purpose: xgrammar compiles on one thread (``max_threads=1``, as
MaskBench runs; vLLM uses 8) and times are CPU seconds of the worker.

Imported with ``OUTLINES_VLLM_COVERAGE_MODEL`` set (the pool's fork server does, as
``preload``), it builds every backend's tokenizer state once, so replacement workers start warm.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from typing import Any

BACKENDS = ("xgrammar", "guidance", "outlines")
MODEL_ENV = "OUTLINES_VLLM_COVERAGE_MODEL"
_UNSUPPORTED = ("not supported", "unsupported", "unimplemented", "does not support", "only supported")

_state: dict[str, Any] = {}


def reason(message: str) -> str:
    """The class of a refusal: ``unsupported`` (a feature the backend lacks) or ``invalid``."""
    lowered = message.lower()
    return "unsupported" if any(word in lowered for word in _UNSUPPORTED) else "invalid"


def _ms(start: float) -> float:
    return (time.process_time() - start) * 1000


def _tokenizer(model: str) -> tuple[Any, int]:
    if "tokenizer" not in _state:
        from transformers import AutoTokenizer

        with open(os.path.join(model, "config.json")) as config:
            vocab_size = json.load(config)["vocab_size"]  # vLLM: model_config.get_vocab_size()
        _state["tokenizer"] = (AutoTokenizer.from_pretrained(model), vocab_size)
    return _state["tokenizer"]


def _backend(name: str, model: str) -> dict[str, Any]:
    """The compiler state of one backend on ``model``'s tokenizer, built once per worker."""
    if name in _state:
        return _state[name]
    tokenizer, vocab_size = _tokenizer(model)
    if name == "xgrammar":
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # vLLM: max_threads=8, cache_enabled=True, VLLM_XGRAMMAR_CACHE_MB (512) of cache.
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True, cache_limit_bytes=512 << 20)
        state = {"compiler": compiler, "vocab_size": vocab_size}
    elif name == "guidance":
        import llguidance.hf

        state = {"ll_tokenizer": llguidance.hf.from_tokenizer(tokenizer, max(vocab_size, len(tokenizer)))}
        state["vocab_size"] = state["ll_tokenizer"].vocab_size
    elif name == "outlines":
        from vllm.v1.structured_output.utils import get_outlines_vocabulary

        state = {"vocabulary": get_outlines_vocabulary(tokenizer), "vocab_size": vocab_size}
    else:
        raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    _state[name] = state
    return state


def warm(model: str, backends: tuple[str, ...] = BACKENDS) -> None:
    """Import the compilers and build their tokenizer state now (the fork server's preload)."""
    for name in backends:
        _backend(name, model)
    from vllm.sampling_params import StructuredOutputsParams  # noqa: F401 (vLLM's checks)
    from vllm.v1.structured_output import backend_guidance, backend_outlines, backend_xgrammar  # noqa: F401


def client_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """What this package sends for ``schema``, ``{"ms", "forms": {engine: {"fields",
    "fallback"}}}`` for an engine that keeps JSON compact itself (``compact``: ours) and one of
    unknown settings (``vanilla``: vLLM's own server), or ``{"error": ...}`` when ``output_spec``
    refuses it (a client-side refusal: nothing would reach vLLM)."""
    from outlines_vllm.types import output_spec

    start = time.process_time()
    try:
        constraint = output_spec(schema).constraint
        forms = {
            engine: {
                "fields": constraint.structured_outputs(engine_compact=compact),
                "fallback": constraint.fallback(engine_compact=compact),
            }
            for engine, compact in (("compact", True), ("vanilla", False))
        }
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "ms": _ms(start)}
    return {"forms": forms, "ms": _ms(start)}


def _check(backend: str, params: Any, state: dict[str, Any]) -> None:
    """vLLM's request check for ``backend`` (``SamplingParams._validate_structured_outputs``)."""
    from types import SimpleNamespace

    holder = SimpleNamespace(structured_outputs=params)
    if backend == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

        validate_xgrammar_grammar(holder)
    elif backend == "guidance":
        from vllm.v1.structured_output.backend_guidance import validate_guidance_grammar

        validate_guidance_grammar(holder, tokenizer=state["ll_tokenizer"])
    else:
        from vllm.v1.structured_output.backend_outlines import validate_structured_output_request_outlines

        validate_structured_output_request_outlines(holder)


def _compile(backend: str, kind: Any, spec: str, params: Any, state: dict[str, Any]) -> Any:
    """The backend's ``compile_grammar``; engine-level options come from the request fields."""
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions as Kind

    compact = bool(params.disable_any_whitespace)
    if backend == "xgrammar":
        compiler = state["compiler"]
        if kind in (Kind.JSON, Kind.JSON_OBJECT):
            schema = spec if kind == Kind.JSON else '{"type": "object"}'
            separators = (",", ":") if compact else None
            return compiler.compile_json_schema(schema, any_whitespace=not compact, separators=separators)
        if kind == Kind.GRAMMAR:
            from vllm.v1.structured_output.utils import grammar_is_likely_lark

            return (
                compiler.compile_lark(spec)
                if grammar_is_likely_lark(spec)
                else compiler.compile_grammar(spec)
            )
        if kind == Kind.REGEX:
            return compiler.compile_regex(spec)
        raise ValueError(f"kind {kind} is not compiled by this benchmark")
    if backend == "guidance":
        import llguidance
        from vllm.v1.structured_output.backend_guidance import serialize_guidance_grammar

        grammar = serialize_guidance_grammar(kind, spec, compact, bool(params.disable_additional_properties))
        matcher = llguidance.LLMatcher(state["ll_tokenizer"], grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher
    import outlines_core
    from outlines_core import json_schema

    if kind == Kind.JSON:
        regex = json_schema.build_regex_from_schema(spec)
    elif kind == Kind.REGEX:
        regex = spec
    else:
        raise ValueError(f"Invalid request type for Outlines backend ({kind!s})")
    return outlines_core.Index(regex, state["vocabulary"].inner)


def compile_task(task: dict[str, Any]) -> dict[str, Any]:
    """Check and compile ``task["fields"]`` (vLLM ``structured_outputs``) with ``task["backend"]``.

    Returns ``accepted``, ``stage`` (where a refusal came from: ``check`` or ``compile``),
    ``reason`` and ``error`` for a refusal, ``check_ms`` and ``compile_ms`` (CPU time), and with
    ``mask_steps`` > 0 the CPU time of each token mask on a random walk through the grammar.
    """
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.v1.structured_output.request import get_structured_output_key

    backend = task["backend"]
    state = _backend(backend, task["model"])
    start = time.process_time()
    try:
        params = StructuredOutputsParams(**task["fields"])
        _check(backend, params, state)
        kind, spec = get_structured_output_key(params)
    except Exception as exc:
        return _refused("check", exc, check_ms=_ms(start))
    check_ms = _ms(start)
    start = time.process_time()
    try:
        compiled = _compile(backend, kind, spec, params, state)
    except Exception as exc:
        return _refused("compile", exc, check_ms=check_ms, compile_ms=_ms(start))
    result: dict[str, Any] = {"accepted": True, "check_ms": check_ms, "compile_ms": _ms(start)}
    if task.get("mask_steps"):
        result["mask_us"] = mask_walk(backend, compiled, state, task["mask_steps"], task.get("seed", 0))
    return result


def _refused(stage: str, exc: Exception, **times: float) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    cause = exc.__cause__
    if cause is not None:  # vLLM wraps the compiler's message
        message += f" ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
    return {"accepted": False, "stage": stage, "reason": reason(message), "error": message, **times}


def mask_walk(backend: str, compiled: Any, state: dict[str, Any], steps: int, seed: int) -> list[float]:
    """CPU microseconds of each next-token mask along a random walk of up to ``steps`` tokens
    (each step takes a random allowed token, end-of-sequence only when nothing else is allowed)."""
    import numpy as np

    rng = random.Random(seed)
    vocab_size = state["vocab_size"]
    times: list[float] = []
    if backend == "xgrammar":
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        fill = lambda: matcher.fill_next_token_bitmask(bitmask, 0)  # noqa: E731
        words, advance, done = lambda: bitmask.numpy()[0], matcher.accept_token, matcher.is_terminated
    elif backend == "guidance":
        import llguidance.numpy as lnp

        bitmask = lnp.allocate_token_bitmask(1, vocab_size)
        fill = lambda: lnp.fill_next_token_bitmask(compiled, bitmask, 0)  # noqa: E731
        words, advance, done = lambda: bitmask[0], compiled.consume_token, compiled.is_stopped
    else:
        import outlines_core

        guide = outlines_core.Guide(compiled)
        mask = np.full((vocab_size + 31) // 32, -1, dtype=np.int32)
        fill = lambda: guide.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)  # noqa: E731
        words, advance, done = lambda: mask, guide.advance, guide.is_finished
    eos = _state["tokenizer"][0].eos_token_id
    stops = {eos} if eos is not None else set()
    for _ in range(steps):
        if done():
            break
        start = time.process_time()
        fill()
        times.append((time.process_time() - start) * 1e6)
        allowed = np.flatnonzero(
            np.unpackbits(np.ascontiguousarray(words()).view(np.uint8), bitorder="little")
        )
        allowed = allowed[allowed < vocab_size]
        choices = [int(t) for t in allowed if int(t) not in stops] or [int(t) for t in allowed]
        if not choices or (len(choices) == len(allowed) and set(choices) <= stops):
            break
        advance(rng.choice(choices))
    return times


if os.environ.get(MODEL_ENV):  # the fork server's preload: warm once, fork many times
    # on failure a worker builds what it needs itself, and reports what fails
    with contextlib.suppress(Exception):
        warm(os.environ[MODEL_ENV])
