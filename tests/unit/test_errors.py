"""Every failure has a named error carrying its HTTP status, whether a retry can help, and what
to do; deterministic failures are sent once, however many retries the client allows."""

from __future__ import annotations

import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from outlines_vllm import (
    AuthenticationError,
    BadRequestError,
    ConstraintRejectedError,
    ContextLengthError,
    ModelNotFoundError,
    RateLimitError,
    RequestFailedError,
    ServerError,
    ServerUnavailableError,
    from_vllm,
)
from outlines_vllm.errors import request_error
from outlines_vllm.models.request import Retries

# (status, vLLM 0.32's message, constrained request?) -> (class, retryable)
CASES = [
    (
        400,
        "This model's maximum context length is 2048 tokens. However, your prompt contains 2051 "
        "input tokens, which exceeds this limit even without any output tokens.",
        True,
        ContextLengthError,
        False,
    ),
    (
        400,
        "Input length (3000) exceeds model's maximum context length (2048).",
        False,
        ContextLengthError,
        False,
    ),
    (
        None,
        "The decoder prompt (length 4000) is longer than the maximum model length of 2048.",
        False,
        ContextLengthError,
        False,
    ),
    (
        400,
        "Failed to transform json schema into a grammar: $ref missing",
        True,
        ConstraintRejectedError,
        False,
    ),
    (400, "Failed to transform regex into a grammar: look-around", True, ConstraintRejectedError, False),
    (400, "Invalid grammar specification.", True, ConstraintRejectedError, False),
    (
        400,
        "The provided JSON schema contains features not supported by xgrammar.",
        True,
        ConstraintRejectedError,
        False,
    ),
    (400, "Grammar error: unexpected token", True, ConstraintRejectedError, False),
    (
        400,
        "1 validation error for ChatCompletionRequest\ntemperature\n  Input should be a number",
        False,
        BadRequestError,
        False,
    ),
    (422, "Unprocessable entity: field required", False, BadRequestError, False),
    (401, "Unauthorized", False, AuthenticationError, False),
    (403, "Forbidden", False, AuthenticationError, False),
    (404, "The model `nope` does not exist.", True, ModelNotFoundError, False),
    (429, "Too many requests", True, RateLimitError, True),
    # vLLM's GenerationError: the engine finished the request with finish_reason "error" -- for
    # a constrained request, a grammar it could not compile. Deterministic: never retried.
    (500, "Internal server error", True, ConstraintRejectedError, False),
    (500, "Internal server error", False, ServerError, True),
    (
        500,
        "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        True,
        ServerError,
        True,
    ),
    (501, "Not implemented", False, ServerError, False),
    (502, "Bad gateway", False, ServerUnavailableError, True),
    (503, "Request failed; please retry", True, ServerUnavailableError, True),
    (504, "Gateway timeout", False, ServerUnavailableError, True),
]


@pytest.mark.parametrize(("status", "message", "constrained", "cls", "retryable"), CASES)
def test_status_and_message_map_to_one_named_error(status, message, constrained, cls, retryable):
    error = request_error(status, message, constrained=constrained)
    assert type(error) is cls
    assert isinstance(error, RequestFailedError)
    assert (error.status_code, error.retryable) == (status, retryable)
    assert message in error.message and message in str(error)
    assert str(error).rstrip().endswith(".")  # ends with what to do
    assert error.hint in str(error)


def test_errors_keep_their_kind_and_fields_through_pickle():
    error = request_error(500, "Internal server error", constrained=True)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ConstraintRejectedError
    assert (again.status_code, again.message, again.retryable, str(again)) == (
        error.status_code,
        error.message,
        error.retryable,
        str(error),
    )


def test_python_families_let_callers_catch_broadly():
    assert issubclass(ConstraintRejectedError, ValueError)
    assert issubclass(ContextLengthError, ValueError)
    assert issubclass(ServerUnavailableError, ConnectionError)
    assert issubclass(ServerUnavailableError, ServerError)
    assert issubclass(AuthenticationError, PermissionError)
    assert issubclass(ModelNotFoundError, LookupError)


def test_retries_stop_at_the_limit_and_never_for_deterministic_errors():
    retries = Retries(limit=2)
    flaky = ServerUnavailableError(503, "restarting")
    assert 0.375 <= retries.pause(flaky) <= 0.5
    assert 0.75 <= retries.pause(flaky) <= 1.0
    with pytest.raises(ServerUnavailableError):
        retries.pause(flaky)
    with pytest.raises(ConstraintRejectedError):
        Retries(limit=5).pause(ConstraintRejectedError(500, "Internal server error"))


# --- against a stand-in server that answers every POST with one scripted error ---------------


class _Failing(BaseHTTPRequestHandler):
    status = 500
    message = "Internal server error"
    posts = 0

    def do_GET(self):
        self._json({"version": "0.32.0"} if self.path == "/version" else {"data": [{"id": "m"}]})

    def do_POST(self):
        type(self).posts += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        kind = {500: "InternalServerError", 503: "ServiceUnavailableError"}.get(self.status, "Error")
        self._json({"error": {"message": self.message, "type": kind, "code": self.status}}, self.status)

    def _json(self, payload, status=200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_server():
    _Failing.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_constrained_500_is_sent_once_although_the_client_allows_retries(failing_server):
    model = from_vllm(openai.OpenAI(base_url=failing_server, api_key="x", max_retries=2), "m")
    with pytest.raises(ConstraintRejectedError, match="cannot compile") as info:
        model("hi", int)
    assert (info.value.status_code, info.value.retryable, _Failing.posts) == (500, False, 1)
    with pytest.raises(ConstraintRejectedError):
        list(model.stream("hi", int))
    assert _Failing.posts == 2


def test_an_unconstrained_500_is_retried_as_often_as_the_client_allows(failing_server):
    model = from_vllm(openai.OpenAI(base_url=failing_server, api_key="x", max_retries=1), "m")
    with pytest.raises(ServerError) as info:
        model("hi")
    assert (type(info.value), info.value.retryable, _Failing.posts) == (ServerError, True, 2)


async def test_the_async_model_retries_a_503_and_raises_server_unavailable(failing_server, monkeypatch):
    monkeypatch.setattr(_Failing, "status", 503)
    model = from_vllm(openai.AsyncOpenAI(base_url=failing_server, api_key="x", max_retries=1), "m")
    with pytest.raises(ServerUnavailableError, match="HTTP 503"):
        await model("hi", int)
    assert _Failing.posts == 2


@pytest.mark.parametrize(
    ("status", "message", "cls"),
    [(401, "Unauthorized", AuthenticationError), (429, "slow down", RateLimitError)],
)
def test_auth_and_rate_limit_statuses_are_named(failing_server, monkeypatch, status, message, cls):
    monkeypatch.setattr(_Failing, "status", status)
    monkeypatch.setattr(_Failing, "message", message)
    model = from_vllm(openai.OpenAI(base_url=failing_server, api_key="x", max_retries=0), "m")
    with pytest.raises(cls, match=f"HTTP {status}"):
        model("hi")
