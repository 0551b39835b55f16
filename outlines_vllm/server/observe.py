"""Record one request's metrics at the ingress, from its answer (whole or streamed).

The ingress sees every finished output, so it counts what vLLM cannot: constrained outputs cut
off by ``max_tokens`` (truncated) and outputs that do not parse as their constraint (invalid,
checked with the parser ``types.py`` gives for the request's constraint).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..errors import OutputValidationError
from .validation import RequestInfo


@dataclass
class Observation:
    endpoint: str
    info: RequestInfo | None = None
    replica: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)
    finish_reasons: dict[int, str | None] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    chunks: int = 0
    _pending: bytes = b""
    _done: bool = False

    @property
    def model(self) -> str:
        return self.info.model if self.info else "unknown"

    @property
    def kind(self) -> str:
        return self.info.kind if self.info else "none"

    def routed(self, info: RequestInfo) -> None:
        """The request passed validation and goes to a replica of ``info.model``."""
        self.info = info
        metrics.IN_FLIGHT.labels(info.model, self.endpoint).inc()

    def response(self, body: bytes) -> None:
        """A whole (non-streamed) completion body."""
        try:
            data = json.loads(body)
        except ValueError:
            return
        self.usage = data.get("usage")
        for i, choice in enumerate(data.get("choices") or []):
            index = choice.get("index", i)
            text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
            self.texts[index] = [text or ""]
            self.finish_reasons[index] = choice.get("finish_reason")

    def sse(self, chunk: bytes) -> None:
        """Bytes of a server-sent-event stream, in whatever pieces they arrive."""
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            self.usage = data.get("usage") or self.usage
            for choice in data.get("choices") or []:
                index = choice.get("index", 0)
                text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if text:
                    self.first_token = self.first_token or time.perf_counter()
                    self.chunks += 1
                    self.texts.setdefault(index, []).append(text)
                if choice.get("finish_reason"):
                    self.finish_reasons[index] = choice["finish_reason"]

    def record(self, status: int) -> None:
        """The client has its whole answer: count it (once)."""
        if self._done:
            return
        self._done = True
        labels = (self.model, self.endpoint, self.kind, self.replica)
        metrics.REQUESTS.labels(*labels, str(status)).inc()
        metrics.REQUEST_DURATION.labels(*labels).observe(time.perf_counter() - self.started)
        if self.info is None:
            return
        metrics.IN_FLIGHT.labels(self.info.model, self.endpoint).dec()
        if status != 200:
            return
        if self.first_token is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(*labels).observe(self.first_token - self.started)
        usage = self.usage or {}
        if isinstance(usage.get("prompt_tokens"), int):
            metrics.PROMPT_TOKENS.labels(*labels).observe(usage["prompt_tokens"])
        generated = usage.get("completion_tokens", self.chunks if self.info.stream else None)
        if isinstance(generated, int):
            metrics.GENERATION_TOKENS.labels(*labels).observe(generated)
        self._check_outputs()

    def _check_outputs(self) -> None:
        if self.kind == "none" or self.info is None:
            return
        labels = (self.model, self.kind, self.replica)
        for index in set(self.texts) | set(self.finish_reasons):
            if self.finish_reasons.get(index) == "length":
                metrics.STRUCTURED_TRUNCATED.labels(*labels).inc()
            elif not self._valid("".join(self.texts.get(index, []))):
                metrics.STRUCTURED_INVALID.labels(*labels).inc()

    def _valid(self, text: str) -> bool:
        assert self.info is not None
        try:
            if self.info.spec is not None:
                self.info.spec.parse(text)
            elif self.info.json_text:
                json.loads(text)
        except (OutputValidationError, ValueError):
            return False
        return True
