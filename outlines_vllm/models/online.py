"""Online models: a vLLM OpenAI-compatible server through the ``openai`` SDK.

``from_vllm(openai.OpenAI(...))`` gives a :class:`VLLM`, ``from_vllm(openai.AsyncOpenAI(...))``
an :class:`AsyncVLLM`; the calls are Outlines' (``model(prompt, output_type)``,
``model.stream(...)``) plus typed results (``parse``), partial objects while streaming and a
bounded-concurrency ``batch``. Both classes share :class:`_Online` and ``request.py``; they
differ only in how they wait for the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from ..engine_info import engine_compact
from ..errors import ConstraintRejectedError, InvalidRequestError, RequestFailedError
from .base import TextStream
from .request import (
    Endpoint,
    Generation,
    PartialObjects,
    Request,
    Retries,
    build_request,
    mapped_errors,
    server_root,
    spec_for_partials,
    without_retries,
)


class _Online:
    """What both online models share: the client, the served model, the server's version
    (read once, lazily) and turning a call's arguments into a :class:`Request`."""

    def __init__(self, client: Any, model_name: str | None = None, *, endpoint: Endpoint = "chat") -> None:
        self.client = client
        # Generation requests go through a copy that does not retry by itself: Retries decides.
        self._sender = without_retries(client)
        self.model_name = model_name
        self.endpoint = endpoint
        self.server_version: str | None = None
        self.engine_compact = False  # the server said its engine keeps JSON compact (engine_info.py)
        self.plain_json = False  # the server refused compact JSON once: send plain schemas
        self._ready = False

    def _request(
        self, prompt: Any, output_type: Any, kwargs: dict[str, Any], stream: bool = False
    ) -> Request:
        kwargs = dict(kwargs)
        endpoint = kwargs.pop("endpoint", self.endpoint)
        return build_request(
            self.model_name,  # type: ignore[arg-type]  # set by _ready()
            prompt,
            output_type,
            kwargs,
            endpoint=endpoint,
            stream=stream,
            server_version=self.server_version,
            plain=self.plain_json,
            engine_compact=self.engine_compact,
        )

    def _after_refusal(self, request: Request, error: ConstraintRejectedError) -> Request:
        """What to send after ``error``. On an engine that keeps JSON compact, the refusal is
        about this schema's keywords: its regex form, quietly, this once. Elsewhere the server
        refuses the compact form itself: the plain schema, remembered for later calls."""
        if self.engine_compact:
            return request.after_refusal(error, warn=False)
        plain = request.after_refusal(error)
        self.plain_json = True
        return plain

    def _learn(self, models: Any, version_info: Any) -> None:
        """Record the served model (when not given), the server's vLLM version and whether its
        engine keeps JSON compact (our servers say so on ``/version``)."""
        if self.model_name is None:
            names = [m.id for m in models.data]
            if len(names) != 1:
                raise InvalidRequestError(
                    f"the server at {server_root(self.client)} serves {len(names)} models {names}; "
                    "pass model_name= to from_vllm"
                )
            self.model_name = names[0]
        if isinstance(version_info, dict):
            self.server_version = version_info.get("version")
            self.engine_compact = engine_compact(version_info.get("structured_outputs"))
        self._ready = True

    def _version_url(self) -> str:
        return server_root(self.client) + "/version"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({server_root(self.client)!r}, model_name={self.model_name!r})"


def _texts(generations: list[Generation], n: int | None) -> Any:
    return [g.text for g in generations] if (n or 1) > 1 else generations[0].text


def _values(generations: list[Generation], n: int | None) -> Any:
    return [g.value for g in generations] if (n or 1) > 1 else generations[0].value


def _progress(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm  # here, not at import: it costs a light client ~0.1 s of CPU

    # disable=None: shown on a terminal, silent in logs and CI.
    return tqdm(total=total, desc="generating", unit="prompt", disable=None if progress else True)


class VLLM(_Online):
    """A vLLM server behind an ``openai.OpenAI`` client."""

    def __init__(self, client: Any, model_name: str | None = None, *, endpoint: Endpoint = "chat") -> None:
        super().__init__(client, model_name, endpoint=endpoint)
        self._lock = threading.Lock()

    def _ensure_ready(self) -> None:
        import openai

        with self._lock:
            if self._ready:
                return
            with mapped_errors(self.client):
                models = self.client.models.list() if self.model_name is None else None
                try:
                    version = self.client.get(self._version_url(), cast_to=object)
                except openai.NotFoundError:
                    version = None
            self._learn(models, version)

    def generate(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> list[Generation]:
        """Every generation (``n`` of them) with text, value, finish reason and reasoning."""
        self._ensure_ready()
        request = self._request(prompt, output_type, kwargs)
        return request.generations(self._send(request))

    def _send(self, request: Request) -> Any:
        """The response (or, streaming, the open stream). A server that refuses compact JSON
        gets the plain schema; only failures a retry can help are sent again."""
        retries = Retries.of(self.client)
        while True:
            try:
                with mapped_errors(self.client, request):
                    return request.create(self._sender)
            except ConstraintRejectedError as error:
                request = self._after_refusal(request, error)
            except RequestFailedError as error:
                time.sleep(retries.pause(error))

    def __call__(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> Any:
        """The generated text (a list of texts when ``n > 1``), checked against ``output_type``."""
        return _texts(self.generate(prompt, output_type, **kwargs), kwargs.get("n"))

    def parse(self, prompt: Any, output_type: Any, **kwargs: Any) -> Any:
        """The validated Python value (a list of values when ``n > 1``)."""
        return _values(self.generate(prompt, output_type, **kwargs), kwargs.get("n"))

    def stream(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> TextStream:
        """Text chunks as they arrive; the whole text is checked when the stream ends, and the
        stream's ``finish_reason`` and ``usage`` are set then."""
        return TextStream(lambda sink: self._stream(sink, prompt, output_type, kwargs))

    def _stream(
        self, sink: TextStream, prompt: Any, output_type: Any, kwargs: dict[str, Any]
    ) -> Iterator[str]:
        self._ensure_ready()
        request = self._request(prompt, output_type, kwargs, stream=True)
        reader = request.reader()
        with self._send(request) as chunks, mapped_errors(self.client, request):
            for chunk in chunks:
                if delta := reader.feed(chunk):
                    yield delta
        reader.finish(sink)

    def stream_partial(self, prompt: Any, output_type: Any, **kwargs: Any) -> Iterator[Any]:
        """Partial values as the object grows (partial Pydantic objects for a model type, dicts
        for a schema); the last is the complete, checked value."""
        spec = spec_for_partials(output_type)
        partials = PartialObjects(spec)
        for delta in self.stream(prompt, spec, **kwargs):
            yield from partials.feed(delta)
        yield from partials.end()

    def batch(
        self,
        prompts: Sequence[Any],
        output_type: Any = None,
        *,
        max_concurrency: int = 8,
        parse: bool = False,
        generations: bool = False,
        return_exceptions: bool = False,
        progress: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """One result per prompt, in order, at most ``max_concurrency`` requests in flight: its
        text, its value (``parse``) or its list of :class:`Generation` (``generations``).

        The first error cancels what has not started and is raised, unless
        ``return_exceptions`` puts each error in its prompt's place.
        """
        self._ensure_ready()
        call = self.generate if generations else self.parse if parse else self
        with ThreadPoolExecutor(max_concurrency) as pool, _progress(len(prompts), progress) as bar:
            futures = [pool.submit(call, prompt, output_type, **kwargs) for prompt in prompts]
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            if pending and not return_exceptions:
                for future in pending:
                    future.cancel()
                next(f for f in done if f.exception()).result()
            wait(futures)
        return [(f.exception() or f.result()) if return_exceptions else f.result() for f in futures]


class AsyncVLLM(_Online):
    """A vLLM server behind an ``openai.AsyncOpenAI`` client."""

    def __init__(self, client: Any, model_name: str | None = None, *, endpoint: Endpoint = "chat") -> None:
        super().__init__(client, model_name, endpoint=endpoint)
        self._lock = asyncio.Lock()

    async def _ensure_ready(self) -> None:
        import openai

        async with self._lock:
            if self._ready:
                return
            with mapped_errors(self.client):
                models = await self.client.models.list() if self.model_name is None else None
                try:
                    version = await self.client.get(self._version_url(), cast_to=object)
                except openai.NotFoundError:
                    version = None
            self._learn(models, version)

    async def generate(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> list[Generation]:
        """Every generation (``n`` of them) with text, value, finish reason and reasoning."""
        await self._ensure_ready()
        request = self._request(prompt, output_type, kwargs)
        return request.generations(await self._send(request))

    async def _send(self, request: Request) -> Any:
        """The response (or, streaming, the open stream). A server that refuses compact JSON
        gets the plain schema; only failures a retry can help are sent again."""
        retries = Retries.of(self.client)
        while True:
            try:
                with mapped_errors(self.client, request):
                    return await request.create(self._sender)
            except ConstraintRejectedError as error:
                request = self._after_refusal(request, error)
            except RequestFailedError as error:
                await asyncio.sleep(retries.pause(error))

    async def __call__(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> Any:
        """The generated text (a list of texts when ``n > 1``), checked against ``output_type``."""
        return _texts(await self.generate(prompt, output_type, **kwargs), kwargs.get("n"))

    async def parse(self, prompt: Any, output_type: Any, **kwargs: Any) -> Any:
        """The validated Python value (a list of values when ``n > 1``)."""
        return _values(await self.generate(prompt, output_type, **kwargs), kwargs.get("n"))

    def stream(self, prompt: Any, output_type: Any = None, **kwargs: Any) -> TextStream:
        """Text chunks as they arrive (``async for``); the whole text is checked when the stream
        ends, and the stream's ``finish_reason`` and ``usage`` are set then."""
        return TextStream(lambda sink: self._stream(sink, prompt, output_type, kwargs))

    async def _stream(
        self, sink: TextStream, prompt: Any, output_type: Any, kwargs: dict[str, Any]
    ) -> AsyncIterator[str]:
        await self._ensure_ready()
        request = self._request(prompt, output_type, kwargs, stream=True)
        reader = request.reader()
        async with await self._send(request) as chunks:
            with mapped_errors(self.client, request):
                async for chunk in chunks:
                    if delta := reader.feed(chunk):
                        yield delta
        reader.finish(sink)

    async def stream_partial(self, prompt: Any, output_type: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Partial values as the object grows (partial Pydantic objects for a model type, dicts
        for a schema); the last is the complete, checked value."""
        spec = spec_for_partials(output_type)
        partials = PartialObjects(spec)
        async for delta in self.stream(prompt, spec, **kwargs):
            for value in partials.feed(delta):
                yield value
        for value in partials.end():
            yield value

    async def batch(
        self,
        prompts: Sequence[Any],
        output_type: Any = None,
        *,
        max_concurrency: int = 8,
        parse: bool = False,
        generations: bool = False,
        return_exceptions: bool = False,
        progress: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """One result per prompt, in order, at most ``max_concurrency`` requests in flight: its
        text, its value (``parse``) or its list of :class:`Generation` (``generations``).

        The first error cancels the rest and is raised, unless ``return_exceptions`` puts each
        error in its prompt's place.
        """
        await self._ensure_ready()
        call = self.generate if generations else self.parse if parse else self
        slots = asyncio.Semaphore(max_concurrency)
        with _progress(len(prompts), progress) as bar:

            async def one(prompt: Any) -> Any:
                async with slots:
                    try:
                        return await call(prompt, output_type, **kwargs)
                    finally:
                        bar.update()

            tasks = [asyncio.ensure_future(one(prompt)) for prompt in prompts]
            try:
                return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
            finally:
                for task in tasks:
                    task.cancel()


def from_vllm(client: Any, model_name: str | None = None, *, endpoint: Endpoint = "chat") -> VLLM | AsyncVLLM:
    """A model for the vLLM server behind ``client`` (``openai.OpenAI`` -> :class:`VLLM`,
    ``openai.AsyncOpenAI`` -> :class:`AsyncVLLM`). Without ``model_name`` the server's only
    model is used; ``endpoint="completions"`` sends plain prompts to ``/v1/completions``."""
    import openai

    if isinstance(client, openai.AsyncOpenAI):
        return AsyncVLLM(client, model_name, endpoint=endpoint)
    if isinstance(client, openai.OpenAI):
        return VLLM(client, model_name, endpoint=endpoint)
    raise TypeError(
        f"from_vllm takes an openai.OpenAI or openai.AsyncOpenAI client, got {type(client).__name__}"
    )
