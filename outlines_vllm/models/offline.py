"""Structured generation on a vLLM engine embedded in this process: ``VLLMOffline`` over
``vllm.LLM`` and ``AsyncVLLMOffline`` (with streaming) over vLLM's async engine.

Both take the same prompts, output types and keyword arguments as the online models, so moving
between a server and an embedded engine changes one line. Requests are built once, by
:class:`_Offline`; the two classes differ only in how they hand requests to the engine.

- ``endpoint="chat"`` (the default when the tokenizer has a chat template) renders prompts with
  that template, as the server's chat endpoint does, so greedy decoding gives the same text
  both ways; ``endpoint="completions"`` sends raw text, as the server's completions endpoint
  does (base models). A list of messages is always a chat.
- Keyword arguments are ``SamplingParams`` fields (``max_tokens``, ``temperature``, ``seed``,
  ...), the openai SDK's ``max_completion_tokens`` and ``extra_body``, and the engine's own
  per-request arguments (``lora_request``, ``priority``, ``chat_template``,
  ``chat_template_kwargs``). The caller's ``SamplingParams`` is copied, never changed.
- With no ``max_tokens``, generation may run to the end of the context, as on the server
  (``SamplingParams``' own default of 16 tokens would truncate most JSON).

vLLM is imported only when an engine is used, never by ``import outlines_vllm``.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine_info import offline_engine_compact, offline_vllm_config
from ..errors import InvalidPromptError, InvalidRequestError, UnsupportedModelError
from ..types import Constraint, OutputSpec, output_spec
from .base import Generation, PartialObjects, TextStream, Usage, engine_errors, finish
from .prompts import to_messages, to_text
from .request import Endpoint, _merge_constraint, spec_for_partials

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams

# Per-request engine arguments (not SamplingParams fields) and the chat template's arguments.
_ENGINE_ARGS = ("lora_request", "priority")
_CHAT_ARGS = ("chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message")
# openai SDK transport options: meaningless in-process, accepted so code moves unchanged.
_TRANSPORT_ARGS = ("timeout", "extra_headers", "extra_query")


@dataclass
class _Request:
    """One engine request: the tokenized prompt, its own SamplingParams, and how to read it."""

    prompt: dict[str, Any]
    params: SamplingParams
    spec: OutputSpec
    lora_request: Any = None
    priority: int = 0

    @property
    def constrained(self) -> bool:
        return self.spec.constraint is not None

    def generations(self, output: RequestOutput) -> list[Generation]:
        """Every sequence of a finished request, checked: truncated or invalid output raises."""
        usage = Usage(len(output.prompt_token_ids or ()), sum(len(c.token_ids) for c in output.outputs))
        return [
            Generation(
                c.text,
                finish(self.spec, c.text, c.finish_reason, self.params.max_tokens, usage),
                c.finish_reason,
                usage=usage,
            )
            for c in output.outputs
        ]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt["prompt_token_ids"])

    def result(self, output: RequestOutput, parse: bool, generations: bool = False) -> Any:
        """The checked text (or the value) of a finished request, a list when ``n > 1``; with
        ``generations``, its list of :class:`Generation` (as ``generate`` returns)."""
        if generations:
            return self.generations(output)
        values = [g.value if parse else g.text for g in self.generations(output)]
        return values if self.params.n > 1 else values[0]


def engine_refusal(vllm_config: Any, tokenizer: Any, params: SamplingParams) -> Exception | None:
    """vLLM's own check of one request, what adding it to the engine runs: the error it raises,
    or None. ``LLM.generate`` raises that error for the whole batch when one request fails it."""
    from vllm.exceptions import VLLMValidationError

    try:
        params.verify(vllm_config.model_config, None, vllm_config.structured_outputs_config, tokenizer)
    except (ValueError, VLLMValidationError) as exc:
        return exc
    return None


class _Offline:
    """Request building shared by the sync and async offline models."""

    def __init__(self, engine: Any, *, endpoint: Endpoint | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.endpoint: Endpoint = endpoint or ("chat" if self.has_chat_template else "completions")
        # The model's generation_config defaults, as the server applies them.
        self._defaults: dict[str, Any] = dict(engine.model_config.get_diff_sampling_param() or {})
        # Whether the engine keeps JSON compact itself: then schemas go as the faster schema form.
        self.vllm_config = offline_vllm_config(engine)
        self.engine_compact = offline_engine_compact(engine)
        self._engine_takes = functools.lru_cache(maxsize=512)(self._check)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine.model_config.model!r}, endpoint={self.endpoint!r})"

    def _request(
        self,
        prompt: Any,
        output_type: Any,
        sampling_params: SamplingParams | None,
        kwargs: dict[str, Any],
        *,
        stream: bool = False,
    ) -> _Request:
        """The engine request for one call; vLLM's own checks of it fail as named errors."""
        with engine_errors(constrained=output_type is not None):
            return self._build(prompt, output_type, sampling_params, kwargs, stream)

    def _build(
        self,
        prompt: Any,
        output_type: Any,
        sampling_params: SamplingParams | None,
        kwargs: dict[str, Any],
        stream: bool,
    ) -> _Request:
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        kwargs = dict(kwargs)
        spec = output_spec(output_type)
        engine_args = {key: kwargs.pop(key) for key in _ENGINE_ARGS if key in kwargs}
        chat_args = {key: kwargs.pop(key) for key in _CHAT_ARGS if key in kwargs}
        endpoint = kwargs.pop("endpoint", None) or self.endpoint
        if "stream" in kwargs:
            raise InvalidRequestError("pass no stream= argument; call .stream(...) to stream")
        fields, so_options = self._sampling_fields(kwargs)

        params = self._params(sampling_params, fields)
        if spec.constraint is not None:
            if params.structured_outputs is not None:
                raise InvalidRequestError(
                    "sampling_params already carries structured_outputs and an output type was "
                    "given too; pass one of them (options such as backend go in "
                    "extra_body={'structured_outputs': {...}})"
                )
            params.structured_outputs = StructuredOutputsParams(
                **_merge_constraint(so_options or None, self._constraint_fields(spec.constraint))
            )
        elif so_options:
            params.structured_outputs = StructuredOutputsParams(**so_options)
        if stream and params.n != 1:
            raise InvalidRequestError("streaming returns one generation; use n=1 or a non-streamed call")
        params.output_kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        return _Request(self._render(prompt, endpoint, chat_args), params, spec, **engine_args)

    def _constraint_fields(self, constraint: Constraint) -> dict[str, Any]:
        """The constraint's fields for this engine; its fallback (``Constraint.fallback``) when
        the engine's own check of requests refuses them."""
        fields = constraint.structured_outputs(engine_compact=self.engine_compact)
        fallback = constraint.fallback(engine_compact=True) if self.engine_compact else None
        if fallback is None or self._engine_takes(json.dumps(fields)):
            return fields
        return fallback

    def _check(self, fields_json: str) -> bool:
        """Whether vLLM's check of a request (what adding it runs) accepts these fields."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(structured_outputs=StructuredOutputsParams(**json.loads(fields_json)))
        return engine_refusal(self.vllm_config, self.tokenizer, params) is None

    def _sampling_fields(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """SamplingParams fields from keyword arguments (openai names included), and the
        caller's own ``structured_outputs`` options from ``extra_body``."""
        from vllm import SamplingParams

        for key in _TRANSPORT_ARGS:
            kwargs.pop(key, None)
        extra = dict(kwargs.pop("extra_body", None) or {})
        so_options = dict(extra.pop("structured_outputs", None) or {})
        fields = {**extra, **kwargs}
        if "max_completion_tokens" in fields:
            fields["max_tokens"] = fields.pop("max_completion_tokens")
        allowed = {name for name in SamplingParams.__struct_fields__ if not name.startswith("_")}
        if unknown := sorted(set(fields) - allowed):
            raise InvalidRequestError(
                f"unknown generation arguments {unknown}: pass SamplingParams fields (max_tokens, "
                f"temperature, seed, ...), {', '.join(_ENGINE_ARGS + _CHAT_ARGS)} or endpoint"
            )
        return fields, so_options

    def _params(self, sampling_params: SamplingParams | None, fields: dict[str, Any]) -> SamplingParams:
        """A new SamplingParams: the caller's (copied) or the model's defaults, then ``fields``."""
        import msgspec
        from vllm import SamplingParams

        if sampling_params is None:
            params = SamplingParams.from_optional(**{"max_tokens": None, **self._defaults})
        else:
            params = sampling_params.clone()
        # replace() validates like the constructor does (and makes another copy).
        return msgspec.structs.replace(params, **fields) if fields else params

    def _render(self, prompt: Any, endpoint: Endpoint, chat_args: dict[str, Any]) -> dict[str, Any]:
        """The token prompt for ``prompt``: through the chat template, or raw text."""
        if endpoint == "completions":
            text = to_text(prompt)
            return {"prompt_token_ids": self.tokenizer.encode(text), "prompt": text}
        if endpoint != "chat":
            raise InvalidRequestError(f'endpoint must be "chat" or "completions", got {endpoint!r}')
        if not (self.has_chat_template or chat_args.get("chat_template")):
            raise InvalidPromptError(
                "the tokenizer has no chat template: pass endpoint='completions' with a string "
                "prompt, or chat_template=... to render messages"
            )
        template_kwargs = dict(chat_args.get("chat_template_kwargs") or {})
        template_kwargs.setdefault("add_generation_prompt", chat_args.get("add_generation_prompt", True))
        if "continue_final_message" in chat_args:
            template_kwargs["continue_final_message"] = chat_args["continue_final_message"]
        text = self.tokenizer.apply_chat_template(
            to_messages(prompt),
            chat_template=chat_args.get("chat_template"),
            tokenize=False,
            **template_kwargs,
        )
        # The template writes the special tokens itself, as in vLLM's chat endpoint.
        return {"prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False), "prompt": text}

    def _requests(
        self,
        prompts: Any,
        output_type: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
        kwargs: dict[str, Any],
    ) -> list[_Request | Exception]:
        """One request per prompt (an output type and SamplingParams each, or one for all);
        a prompt that cannot become a request stands as its exception."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InvalidPromptError("batch takes a list of prompts (strings or message lists)")
        types = _per_prompt(output_type, len(prompts), "output types")
        params = _per_prompt(sampling_params, len(prompts), "sampling_params")
        out: list[_Request | Exception] = []
        for prompt, tp, sp in zip(prompts, types, params, strict=True):
            try:
                out.append(self._request(prompt, tp, sp, kwargs))
            except Exception as exc:  # our named errors, and vLLM's own checks of the params
                out.append(exc)
        return out


class VLLMOffline(_Offline):
    """Structured generation on a ``vllm.LLM`` in this process.

    ``model(prompt, output_type)`` returns the checked text, ``model.parse(...)`` the validated
    value, ``model.batch(...)`` runs many prompts (each with its own output type if you like) in
    ONE engine call, ``model.stream(...)`` yields text as it is generated.
    """

    engine: LLM

    def close(self) -> None:
        """Shut the engine down (its engine-core process included)."""
        self.engine.llm_engine.engine_core.shutdown()

    def generate(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> list[Generation]:
        """Every generation (``n`` of them) with its text, value and finish reason."""
        request = self._request(prompt, output_type, sampling_params, kwargs)
        (output,) = self._generate([request], progress=False, isolate=False)
        return request.generations(output)

    def __call__(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> Any:
        """The generated text (a list of texts when ``n > 1``), checked against ``output_type``."""
        (value,) = self.batch(
            [prompt], output_type, sampling_params=sampling_params, progress=False, **kwargs
        )
        return value

    def parse(
        self, prompt: Any, output_type: Any, sampling_params: SamplingParams | None = None, **kwargs: Any
    ) -> Any:
        """The validated Python value (a list of values when ``n > 1``)."""
        (value,) = self.batch(
            [prompt], output_type, sampling_params=sampling_params, parse=True, progress=False, **kwargs
        )
        return value

    def batch(
        self,
        prompts: Sequence[Any],
        output_type: Any = None,
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        parse: bool = False,
        generations: bool = False,
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """Results for ``prompts`` in order, generated in ONE engine call.

        ``output_type`` and ``sampling_params`` are one for all prompts or a list with one per
        prompt. ``return_exceptions=True`` puts each failed item's exception in its place
        instead of raising; ``generations=True`` gives each prompt's list of :class:`Generation`
        (text, value, finish reason, usage). ``max_concurrency`` is accepted for parity with the online models;
        the engine schedules the whole batch itself.
        """
        requests = self._requests(prompts, output_type, sampling_params, kwargs)
        if not return_exceptions and (error := next((r for r in requests if isinstance(r, Exception)), None)):
            raise error
        ready = [r for r in requests if isinstance(r, _Request)]
        outputs = iter(self._generate(ready, progress=progress and len(ready) > 1, isolate=return_exceptions))
        results: list[Any] = []
        for request in requests:
            try:
                if isinstance(request, Exception):
                    raise request
                output = next(outputs)
                if isinstance(output, Exception):
                    raise output
                results.append(request.result(output, parse, generations))
            except Exception as exc:
                if not return_exceptions:
                    raise
                results.append(exc)
        return results

    def stream(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> TextStream:
        """Text chunks as the engine produces them; the whole text is checked when the stream
        ends (truncated or invalid output raises then), and the stream's ``finish_reason`` and
        ``usage`` are set then."""
        request = self._request(prompt, output_type, sampling_params, kwargs, stream=True)
        return TextStream(lambda sink: self._stream(sink, request))

    def _stream(self, sink: TextStream, request: _Request) -> Iterator[str]:
        engine = self.engine.llm_engine
        request_id = f"outlines-vllm-{uuid.uuid4().hex}"
        with engine_errors(request.constrained):
            internal_id = engine.add_request(
                request_id,
                request.prompt,
                request.params,
                lora_request=request.lora_request,
                priority=request.priority,
            )
        text, finish_reason, finished, tokens = "", None, False, 0
        try:
            while not finished and engine.has_unfinished_requests():
                with engine_errors(request.constrained):
                    outputs = engine.step()
                for output in outputs:
                    if output.request_id not in (request_id, internal_id):
                        continue
                    completion = output.outputs[0]
                    finish_reason, finished = completion.finish_reason, output.finished
                    tokens += len(completion.token_ids)
                    if completion.text:
                        text += completion.text
                        yield completion.text
        finally:
            if not finished:
                engine.abort_request([internal_id], internal=True)
        usage = Usage(request.prompt_tokens, tokens)
        sink.ended(text, finish_reason, usage)
        finish(request.spec, text, finish_reason, request.params.max_tokens, usage)

    def stream_partial(
        self, prompt: Any, output_type: Any, sampling_params: SamplingParams | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Partial values as the object grows (partial Pydantic objects for a model type, dicts
        for a schema); the last is the complete, checked value."""
        spec = spec_for_partials(output_type)
        partials = PartialObjects(spec)
        for delta in self.stream(prompt, spec, sampling_params, **kwargs):
            yield from partials.feed(delta)
        yield from partials.end()

    def _generate(self, requests: list[_Request], progress: bool, isolate: bool) -> list[Any]:
        """ONE ``llm.generate`` call for all requests. With ``isolate``, a call the engine
        rejects as a whole (one bad request aborts the batch) is retried request by request, so
        only the bad ones fail (as exceptions in their places)."""
        if not requests:
            return []
        try:
            with engine_errors(any(r.constrained for r in requests)):
                return self.engine.generate(
                    [r.prompt for r in requests],
                    [r.params for r in requests],
                    use_tqdm=progress,
                    lora_request=[r.lora_request for r in requests],
                    priority=[r.priority for r in requests],
                )
        except Exception as exc:
            if not isolate:
                raise
            if len(requests) == 1:
                return [exc]
        return [self._generate([r], progress=False, isolate=True)[0] for r in requests]


class AsyncVLLMOffline(_Offline):
    """Structured generation on vLLM's async engine (``AsyncLLM``) in this process, with
    streaming of text and of partial JSON objects. Same methods as :class:`VLLMOffline`,
    awaitable / async iterators."""

    def close(self) -> None:
        """Shut the engine down (its engine-core process included)."""
        self.engine.shutdown()

    async def generate(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> list[Generation]:
        """Every generation (``n`` of them) with its text, value and finish reason."""
        request = self._request(prompt, output_type, sampling_params, kwargs)
        return request.generations(await self._final(request))

    async def __call__(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> Any:
        """The generated text (a list of texts when ``n > 1``), checked against ``output_type``."""
        request = self._request(prompt, output_type, sampling_params, kwargs)
        return request.result(await self._final(request), parse=False)

    async def parse(
        self, prompt: Any, output_type: Any, sampling_params: SamplingParams | None = None, **kwargs: Any
    ) -> Any:
        """The validated Python value (a list of values when ``n > 1``)."""
        request = self._request(prompt, output_type, sampling_params, kwargs)
        return request.result(await self._final(request), parse=True)

    async def batch(
        self,
        prompts: Sequence[Any],
        output_type: Any = None,
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        parse: bool = False,
        generations: bool = False,
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """Results for ``prompts`` in order; every request goes to the engine at once (at most
        ``max_concurrency`` in flight when given), the engine batches them."""
        import asyncio

        from tqdm.auto import tqdm

        requests = self._requests(prompts, output_type, sampling_params, kwargs)
        slots = asyncio.Semaphore(max_concurrency or len(requests) or 1)
        with tqdm(
            total=len(requests), desc="generating", unit="prompt", disable=None if progress else True
        ) as bar:

            async def one(request: _Request | Exception) -> Any:
                try:
                    if isinstance(request, Exception):
                        raise request
                    async with slots:
                        return request.result(await self._final(request), parse, generations)
                finally:
                    bar.update()

            tasks = [asyncio.ensure_future(one(r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
            finally:
                for task in tasks:
                    task.cancel()

    def stream(
        self,
        prompt: Any,
        output_type: Any = None,
        sampling_params: SamplingParams | None = None,
        **kwargs: Any,
    ) -> TextStream:
        """Text chunks as the engine produces them (``async for``); the whole text is checked
        when the stream ends (truncated or invalid output raises then), and the stream's
        ``finish_reason`` and ``usage`` are set then."""
        request = self._request(prompt, output_type, sampling_params, kwargs, stream=True)
        return TextStream(lambda sink: self._stream(sink, request))

    async def _stream(self, sink: TextStream, request: _Request) -> AsyncIterator[str]:
        text, finish_reason, tokens = "", None, 0
        async for output in self._outputs(request):
            completion = output.outputs[0]
            finish_reason = completion.finish_reason or finish_reason
            tokens += len(completion.token_ids)
            if completion.text:
                text += completion.text
                yield completion.text
        usage = Usage(request.prompt_tokens, tokens)
        sink.ended(text, finish_reason, usage)
        finish(request.spec, text, finish_reason, request.params.max_tokens, usage)

    async def stream_partial(
        self, prompt: Any, output_type: Any, sampling_params: SamplingParams | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Partial values as the object grows (partial Pydantic objects for a model type, dicts
        for a schema); the last is the complete, checked value."""
        spec = spec_for_partials(output_type)
        partials = PartialObjects(spec)
        async for delta in self.stream(prompt, spec, sampling_params, **kwargs):
            for value in partials.feed(delta):
                yield value
        for value in partials.end():
            yield value

    async def _final(self, request: _Request) -> RequestOutput:
        final = None
        async for output in self._outputs(request):
            final = output
        return final

    async def _outputs(self, request: _Request) -> AsyncIterator[RequestOutput]:
        with engine_errors(request.constrained):
            async for output in self.engine.generate(
                request.prompt,
                request.params,
                f"outlines-vllm-{uuid.uuid4().hex}",
                lora_request=request.lora_request,
                priority=request.priority,
            ):
                yield output


def from_vllm_offline(engine: Any, *, endpoint: Endpoint | None = None) -> VLLMOffline | AsyncVLLMOffline:
    """An offline model over ``engine``: a ``vllm.LLM`` gives :class:`VLLMOffline`, vLLM's
    async engine (``AsyncLLM``, also known as ``AsyncLLMEngine``) gives :class:`AsyncVLLMOffline`.
    ``endpoint="completions"`` sends raw prompts, without the chat template."""
    from vllm import LLM
    from vllm.v1.engine.async_llm import AsyncLLM

    if isinstance(engine, LLM):
        return VLLMOffline(engine, endpoint=endpoint)
    if isinstance(engine, AsyncLLM):
        return AsyncVLLMOffline(engine, endpoint=endpoint)
    raise UnsupportedModelError(
        f"from_vllm_offline takes a vllm.LLM or vLLM's AsyncLLM, got {type(engine).__name__}; "
        "for a server use from_vllm(openai.OpenAI(base_url=...)), or load(url_or_folder)"
    )


def _per_prompt(value: Any, count: int, what: str) -> list[Any]:
    """``value`` for each of ``count`` prompts: a list is one per prompt, anything else is shared."""
    if isinstance(value, list):
        if len(value) != count:
            raise InvalidRequestError(
                f"got {len(value)} {what} for {count} prompts; give one, or one per prompt"
            )
        return value
    return [value] * count
