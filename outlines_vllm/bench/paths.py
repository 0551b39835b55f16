"""The four ways a benchmark request travels: raw or through this package, online or offline.

The raw paths are the baseline our overhead is measured against: the ``openai`` SDK with
``extra_body={"structured_outputs": ...}`` online, ``vllm.LLM.chat`` with the same
``SamplingParams`` offline. The package paths use only the public model API
(``from_vllm`` / ``from_vllm_offline``). Every path returns one :class:`Record` per request;
none judges validity (``validate.judge`` does, afterwards, for all of them alike).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine_info import offline_engine_compact
from ..errors import OutputValidationError, TruncatedOutputError
from .validate import Verdict
from .workloads import Request


@dataclass
class Record:
    """What happened to one request. ``ok`` is False when no answer came back (an error)."""

    ok: bool
    text: str = ""
    finish_reason: str | None = None
    output_tokens: int | None = None
    latency: float = 0.0
    ttft: float | None = None
    tpot: float | None = None
    itl: list[float] = field(default_factory=list)
    error: str | None = None
    verdict: Verdict | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling options shared by every path, so all of them generate under the same rules."""

    max_tokens: int
    temperature: float
    seed: int


def _tpot(first: float | None, last: float | None, tokens: int | None) -> float | None:
    """Mean time per output token after the first: None when fewer than two tokens came."""
    if first is None or last is None or not tokens or tokens < 2:
        return None
    return (last - first) / (tokens - 1)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


# --- online --------------------------------------------------------------------------------------


async def online_raw(
    client: Any, model: str, request: Request, sampling: Sampling, seed: int, engine_compact: bool = False
) -> Record:
    """One streamed chat request with the raw ``openai`` client (the online baseline), with the
    constraint fields the package sends to this server (``engine_compact``: see engine_info.py)."""
    kwargs: dict[str, Any] = {}
    if request.spec.constraint is not None:
        fields = request.spec.constraint.structured_outputs(engine_compact=engine_compact)
        kwargs["extra_body"] = {"structured_outputs": fields}
    start = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    finish_reason = tokens = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=request.messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            seed=seed,
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    times.append(time.perf_counter())
                    parts.append(choice.delta.content)
                finish_reason = choice.finish_reason or finish_reason
    except Exception as exc:  # every failure is a counted error, never a crash of the run
        return Record(False, latency=time.perf_counter() - start, error=_error(exc))
    return _streamed(start, times, "".join(parts), finish_reason, tokens)


async def online_package(model: Any, request: Request, sampling: Sampling, seed: int) -> Record:
    """One streamed request through ``AsyncVLLM.stream``: its checks raise at the end, and the
    stream then holds the finish reason and the server's token usage either way."""
    start = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    stream = model.stream(
        request.messages,
        request.spec,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        seed=seed,
    )
    try:
        async for chunk in stream:
            if chunk:
                times.append(time.perf_counter())
                parts.append(chunk)
    except (TruncatedOutputError, OutputValidationError):
        pass  # judged again below, like every other answer
    except Exception as exc:
        return Record(False, latency=time.perf_counter() - start, error=_error(exc))
    tokens = stream.usage.completion_tokens if stream.usage else None
    return _streamed(start, times, "".join(parts), stream.finish_reason, tokens)


def _streamed(start: float, times: list[float], text: str, finish: str | None, tokens: int | None) -> Record:
    end = time.perf_counter()
    first = times[0] if times else None
    return Record(
        True,
        text,
        finish,
        tokens,
        latency=end - start,
        ttft=(first - start) if first is not None else None,
        tpot=_tpot(first, times[-1] if times else None, len(times)),  # vLLM streams a chunk per token
        itl=[b - a for a, b in itertools.pairwise(times)],
    )


# --- offline -------------------------------------------------------------------------------------


def sampling_params(request: Request | None, sampling: Sampling, engine_compact: bool = False) -> Any:
    """``SamplingParams`` for one request, with the constraint fields the package sends to this
    engine; without a request, the bare sampling options the package adds the constraint to."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    constraint = request.spec.constraint if request else None
    fields = constraint.structured_outputs(engine_compact=engine_compact) if constraint else None
    return SamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        seed=sampling.seed,
        structured_outputs=StructuredOutputsParams(**fields) if fields else None,
    )


def offline_raw(llm: Any, requests: Sequence[Request], sampling: Sampling) -> list[Record]:
    """One ``LLM.chat`` call for the batch (the offline baseline).

    ``LLM.chat`` refuses the whole batch when vLLM's check refuses one request (a schema the
    backend cannot compile), so that check runs first, untimed: each refused request is a
    counted error and the rest go as one batch, as the package's ``batch`` does. Per-request
    TTFT and time per output token come from vLLM's request stats when the engine logs them
    (``disable_log_stats=False``); per-token gaps are not exposed offline.
    """
    from ..engine_info import offline_vllm_config
    from ..models.offline import engine_refusal

    compact = offline_engine_compact(llm)
    config, tokenizer = offline_vllm_config(llm), llm.get_tokenizer()
    params = [sampling_params(r, sampling, compact) for r in requests]
    refused = {
        i: Record(False, error=_error(exc))
        for i, one in enumerate(params)
        if one.structured_outputs is not None and (exc := engine_refusal(config, tokenizer, one))
    }
    sent = [i for i in range(len(requests)) if i not in refused]
    start = time.perf_counter()
    try:
        outputs = llm.chat([requests[i].messages for i in sent], [params[i] for i in sent], use_tqdm=False)
    except Exception as exc:
        latency = time.perf_counter() - start
        answers = [Record(False, latency=latency, error=_error(exc)) for _ in sent]
    else:
        latency = time.perf_counter() - start
        answers = [_answered(out, latency) for out in outputs]
    by_index = refused | dict(zip(sent, answers, strict=True))
    return [by_index[i] for i in range(len(requests))]


def _answered(output: Any, latency: float) -> Record:
    completion = output.outputs[0]
    record = Record(True, completion.text, completion.finish_reason, latency=latency)
    engine_stats(record, output)
    return record


def engine_stats(record: Record, output: Any) -> None:
    """Token count, TTFT and time per output token of ``record`` from vLLM's own request stats
    (``RequestOutput.metrics``, logged when the engine runs with ``disable_log_stats=False``)."""
    stats = output.metrics
    tokens = len(output.outputs[0].token_ids)
    record.output_tokens = tokens
    record.ttft = stats.first_token_latency if stats else None
    record.tpot = _tpot(stats.first_token_ts, stats.last_token_ts, tokens) if stats else None


def offline_package(model: Any, requests: Sequence[Request], sampling: Sampling) -> list[Record]:
    """The batch through ``VLLMOffline.batch`` (one engine call, an output type per prompt).

    Failed items come back as their exceptions; finish reasons and token counts come from the
    package's generations (or, for truncated and invalid output, from its error). The engine's
    ``RequestOutput``s are also read on the way past (``LLM.generate`` wrapped for this call)
    and matched to the answers by their text, so TTFT and TPOT come from the engine's request
    stats, as on the raw path.
    """
    outputs: list[Any] = []
    engine = model.engine
    generate = engine.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = generate(*args, **kwargs)
        outputs.extend(result)
        return result

    engine.generate = recording
    start = time.perf_counter()
    try:
        results = model.batch(
            [r.messages for r in requests],
            [r.spec for r in requests],
            sampling_params=sampling_params(None, sampling),
            generations=True,
            return_exceptions=True,
            progress=False,
        )
    except Exception as exc:
        results = [exc] * len(requests)
    finally:
        del engine.generate  # the instance attribute hid the class's method
    end = time.perf_counter()
    by_text: dict[str, list[Any]] = {}
    for output in outputs:
        by_text.setdefault(output.outputs[0].text, []).append(output)
    records = [_package_record(result) for result in results]
    for record in records:
        record.latency = end - start
        if not record.ok:
            continue
        if matches := by_text.get(record.text):
            output = matches.pop(0)
            engine_stats(record, output)
            record.finish_reason = output.outputs[0].finish_reason  # the engine's, not inferred
    return records


def _package_record(result: Any) -> Record:
    if isinstance(result, TruncatedOutputError):
        return Record(True, result.text, "length", _completion_tokens(result.usage))
    if isinstance(result, OutputValidationError):
        return Record(True, result.text, result.finish_reason or "stop", _completion_tokens(result.usage))
    if isinstance(result, BaseException):
        return Record(False, error=_error(result))
    (generation,) = result
    return Record(True, generation.text, generation.finish_reason, _completion_tokens(generation.usage))


def _completion_tokens(usage: Any) -> int | None:
    return usage.completion_tokens if usage is not None else None
