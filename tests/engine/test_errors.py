"""Each failure a real vLLM server or embedded engine reports arrives as its named error, with the
status, whether a retry can help, and what to do; the same failure gets the same class online and
offline. A grammar the engine cannot compile is sent once, whatever the client's retry budget."""

from __future__ import annotations

import httpx
import openai
import pytest

from outlines_vllm import (
    AuthenticationError,
    ConstraintRejectedError,
    ContextLengthError,
    ModelNotFoundError,
    Regex,
    from_vllm,
    from_vllm_offline,
    output_spec,
)
from outlines_vllm.datasets import jsonschemabench

# vLLM 0.32's xgrammar passes this real schema's validation, then fails to compile it inside the
# engine ("Check failed: per_rule_fsm_hashes"); the server answers HTTP 500 "Internal server error".
UNCOMPILABLE = output_spec(
    next(r["schema"] for r in jsonschemabench("Github_medium") if r["id"] == "o6193"), compact=False
)
TOO_LONG = "word " * 3000  # more tokens than the suite's max_model_len (2048)


@pytest.fixture
def counted(vllm_server):
    """A default client (the SDK's max_retries=2) that records every HTTP request it sends."""
    sent: list[str] = []
    hooks = {"request": [lambda request: sent.append(request.url.path)]}
    client = openai.OpenAI(
        base_url=vllm_server.base_url + "/v1", api_key="none", http_client=httpx.Client(event_hooks=hooks)
    )
    yield from_vllm(client, "smollm2"), sent
    client.close()


def test_unknown_model_is_model_not_found(openai_client):
    with pytest.raises(ModelNotFoundError, match="does not exist") as caught:
        from_vllm(openai_client, model_name="no-such-model")("Hi", max_tokens=3)
    assert (caught.value.status_code, caught.value.retryable) == (404, False)
    assert "model_name=" in str(caught.value)


def test_a_prompt_beyond_the_context_is_context_length_online_and_offline(openai_client, llm):
    with pytest.raises(ContextLengthError, match="maximum context length") as online:
        from_vllm(openai_client)(TOO_LONG, max_tokens=3)
    assert (online.value.status_code, online.value.retryable) == (400, False)
    with pytest.raises(ContextLengthError, match="maximum context length") as offline:
        from_vllm_offline(llm)(TOO_LONG, max_tokens=3)
    assert (offline.value.status_code, offline.value.retryable) == (None, False)


def test_max_tokens_beyond_the_context_is_context_length(openai_client):
    with pytest.raises(ContextLengthError, match="max_model_len"):
        from_vllm(openai_client)("Hi", max_tokens=5000)


def test_a_grammar_the_engine_cannot_compile_is_rejected_and_sent_once(counted):
    model, sent = counted
    with pytest.raises(ConstraintRejectedError, match="cannot compile") as caught:
        model("Describe it.", UNCOMPILABLE, max_tokens=20)
    assert (caught.value.status_code, caught.value.retryable) == (500, False)
    # The SDK alone would have sent it three times (measured: 3 requests, about 1.9 s).
    assert [path for path in sent if path != "/version"] == ["/v1/chat/completions"]
    sent.clear()
    with pytest.raises(ConstraintRejectedError):  # streamed: an error event after the 200
        "".join(model.stream("Describe it.", UNCOMPILABLE, max_tokens=20))
    assert sent == ["/v1/chat/completions"]


def test_a_grammar_the_engine_cannot_compile_is_rejected_offline(llm):
    with pytest.raises(ConstraintRejectedError, match="cannot compile") as caught:
        from_vllm_offline(llm)("Describe it.", UNCOMPILABLE, max_tokens=20)
    assert (caught.value.status_code, caught.value.retryable) == (None, False)


async def test_a_grammar_the_engine_cannot_compile_is_rejected_by_the_async_engine(async_llm):
    with pytest.raises(ConstraintRejectedError, match="cannot compile"):
        await from_vllm_offline(async_llm)("Describe it.", UNCOMPILABLE, max_tokens=20)


def test_a_regex_the_backend_refuses_is_constraint_rejected_online_and_offline(openai_client, llm):
    with pytest.raises(ConstraintRejectedError, match=r"(?i)look-?around") as online:
        from_vllm(openai_client)("Hi", Regex("(?=a)a+"), max_tokens=5)
    assert online.value.status_code == 400
    with pytest.raises(ConstraintRejectedError, match=r"(?i)look-?around") as offline:
        from_vllm_offline(llm)("Hi", Regex("(?=a)a+"), max_tokens=5)
    assert offline.value.status_code is None


@pytest.fixture(scope="module")
def keyed_server(model_path, tmp_path_factory):
    """A second real vLLM server, started with ``--api-key`` (about 40 s more for this module)."""
    from outlines_vllm.launch import LocalServer

    log = tmp_path_factory.mktemp("keyed-server") / "server.log"
    server = LocalServer(
        model_path,
        served_model_name="smollm2",
        extra_args=["--api-key", "right-key"],
        log_path=log,
        env={"VLLM_CPU_OMP_THREADS_BIND": "0"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_wrong_api_key_is_an_authentication_error(keyed_server):
    url = keyed_server.base_url + "/v1"
    wrong = from_vllm(openai.OpenAI(base_url=url, api_key="wrong-key", max_retries=2), "smollm2")
    with pytest.raises(AuthenticationError, match="api_key=") as caught:
        wrong("Hi", max_tokens=3)
    assert (caught.value.status_code, caught.value.retryable) == (401, False)
    right = from_vllm(openai.OpenAI(base_url=url, api_key="right-key", max_retries=0), "smollm2")
    assert isinstance(right("Hi", max_tokens=3), str)
