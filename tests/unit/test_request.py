"""The one request builder and response parser: exact request bodies, extra_body merging without
mutation, response checking, and version awareness against a stand-in HTTP server."""

from __future__ import annotations

import copy
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from outlines_vllm import (
    CFG,
    Chat,
    InvalidRequestError,
    JsonObject,
    RefusalError,
    Regex,
    TruncatedOutputError,
    UnsupportedServerError,
    from_vllm,
    output_spec,
)
from outlines_vllm.errors import CompactJSONWarning, ConstraintRejectedError, OutputValidationError
from outlines_vllm.models.online import VLLM, AsyncVLLM
from outlines_vllm.models.request import (
    PartialObjects,
    build_request,
    check_server_version,
)
from outlines_vllm.types import CONSTRAINT_HEADER

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
USER = [{"role": "user", "content": "hi"}]


class Item(BaseModel):
    a: int


def body(output_type, **kwargs):
    return build_request("m", "hi", output_type, kwargs, server_version="0.32.0").body


@pytest.mark.parametrize(
    ("output_type", "structured_outputs", "kind"),
    [
        (output_spec(SCHEMA, compact=False), {"json": SCHEMA}, "json"),
        (SCHEMA, {"regex": r'\{"a":(-)?(0|[1-9][0-9]{0,15})\}'}, "json"),
        (Regex("[0-9]+"), {"regex": "[0-9]+"}, "regex"),
        (Literal["yes", "no"], {"choice": ["yes", "no"]}, "choice"),
        (CFG('start: "a"'), {"grammar": 'start: "a"'}, "grammar"),
        (output_spec(JsonObject, compact=False), {"json_object": True}, "json_object"),
        (JsonObject, {"json_object": True, "disable_any_whitespace": True}, "json_object"),
    ],
)
def test_exact_body_for_each_constraint_kind(output_type, structured_outputs, kind):
    assert body(output_type, max_tokens=5) == {
        "model": "m",
        "messages": USER,
        "max_tokens": 5,
        "extra_body": {"structured_outputs": structured_outputs},
        "extra_headers": {CONSTRAINT_HEADER: kind},
    }


def test_compact_json_carries_its_plain_form_to_retry_with():
    request = build_request("m", "hi", SCHEMA, {"extra_body": {"top_k": 2}})
    assert request.plain.body["extra_body"] == {"structured_outputs": {"json": SCHEMA}, "top_k": 2}
    assert request.plain.plain is None
    assert build_request("m", "hi", SCHEMA, {}, plain=True).body["extra_body"] == {
        "structured_outputs": {"json": SCHEMA}
    }
    for nothing_to_fall_back_to in (Regex("a"), output_spec(SCHEMA, compact=False), None):
        assert build_request("m", "hi", nothing_to_fall_back_to, {}).plain is None


def test_a_server_whose_engine_is_compact_gets_the_schema_form():
    request = build_request("m", "hi", SCHEMA, {}, engine_compact=True)
    sent = request.body["extra_body"]["structured_outputs"]
    assert (
        sent["disable_any_whitespace"] is True and sent["json"]["x-guidance"]["whitespace_flexible"] is False
    )
    # If the engine refuses this schema's keywords, the regex form states them exactly.
    regex_form = build_request("m", "hi", SCHEMA, {}).body["extra_body"]
    assert list(regex_form["structured_outputs"]) == ["regex"]
    assert request.plain.body["extra_body"] == regex_form


def test_free_text_sends_no_structured_outputs_and_labels_none():
    assert body(None) == {"model": "m", "messages": USER, "extra_headers": {CONSTRAINT_HEADER: "none"}}


def test_completions_endpoint_sends_the_prompt_text_and_streaming_sets_stream():
    request = build_request("m", "Once", Regex("a"), {}, endpoint="completions", stream=True)
    assert request.endpoint == "completions"
    assert request.body == {
        "model": "m",
        "prompt": "Once",
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_body": {"structured_outputs": {"regex": "a"}},
        "extra_headers": {CONSTRAINT_HEADER: "regex"},
    }


def test_chat_inputs_become_messages():
    chat = Chat().add_system_message("be brief").add_user_message("hi")
    assert build_request("m", chat, None, {}).body["messages"] == chat.messages
    assert build_request("m", USER, None, {}).body["messages"] == USER


def test_extra_body_is_deep_merged_into_a_copy_and_never_mutated():
    extra_body = {"structured_outputs": {"backend": "xgrammar"}, "top_k": 5, "nested": {"x": [1]}}
    extra_headers = {"X-Trace": "1"}
    kwargs = {"extra_body": extra_body, "extra_headers": extra_headers, "temperature": 0}
    before = copy.deepcopy(kwargs)
    sent = build_request("m", "hi", Regex("a"), kwargs).body
    assert sent["extra_body"] == {
        "structured_outputs": {"backend": "xgrammar", "regex": "a"},
        "top_k": 5,
        "nested": {"x": [1]},
    }
    assert sent["extra_headers"] == {"X-Trace": "1", CONSTRAINT_HEADER: "regex"}
    assert sent["temperature"] == 0
    assert kwargs == before
    sent["extra_body"]["nested"]["x"].append(2)
    assert extra_body["nested"]["x"] == [1]  # a deep copy, not a shallow one


def test_extra_body_none_and_callers_own_constraint_without_output_type():
    assert body(Regex("a"), extra_body=None)["extra_body"] == {"structured_outputs": {"regex": "a"}}
    own = {"structured_outputs": {"regex": "b"}}
    assert body(None, extra_body=own)["extra_body"] == own


def test_two_constraints_at_once_is_a_named_error():
    with pytest.raises(InvalidRequestError, match="already holds a constraint"):
        body(Regex("a"), extra_body={"structured_outputs": {"json": SCHEMA}})


def test_bad_call_arguments_are_named_errors():
    with pytest.raises(InvalidRequestError, match=r"\.stream"):
        body(None, stream=True)
    with pytest.raises(InvalidRequestError, match="n=1"):
        build_request("m", "hi", None, {"n": 2}, stream=True)
    with pytest.raises(InvalidRequestError, match="endpoint"):
        build_request("m", "hi", None, {}, endpoint="embeddings")
    with pytest.raises(Exception, match="string"):
        build_request("m", USER, None, {}, endpoint="completions")


@pytest.mark.parametrize("version", ["0.11.2", "0.6.3.post1", "v0.9.0"])
def test_servers_older_than_0_12_are_refused_for_constraints(version):
    with pytest.raises(UnsupportedServerError, match="upgrade"):
        check_server_version(version)
    with pytest.raises(UnsupportedServerError):
        build_request("m", "hi", Regex("a"), {}, server_version=version)
    build_request("m", "hi", None, {}, server_version=version)  # free text is fine anywhere


@pytest.mark.parametrize("version", ["0.12.0", "0.32.0+cpu", "1.0.0rc1", None])
def test_current_or_unknown_servers_pass(version):
    check_server_version(version)


def chat_response(*choices):
    return ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": i, "finish_reason": finish, "message": {"role": "assistant", **message}}
                for i, (message, finish) in enumerate(choices)
            ],
        }
    )


def test_response_parser_returns_values_and_reasoning():
    request = build_request("m", "hi", Item, {"n": 2})
    response = chat_response(
        ({"content": '{"a":2}', "reasoning": "thinking"}, "stop"), ({"content": '{"a":3}'}, "stop")
    )
    first, second = request.generations(response)
    assert (first.value, first.reasoning, first.finish_reason) == (Item(a=2), "thinking", "stop")
    assert second.value == Item(a=3) and second.text == '{"a":3}'


def test_response_parser_raises_on_truncation_refusal_and_invalid_output():
    request = build_request("m", "hi", Item, {"max_tokens": 3})
    with pytest.raises(TruncatedOutputError, match="max_tokens=3") as info:
        request.generations(chat_response(({"content": '{"a'}, "length")))
    assert info.value.text == '{"a'
    with pytest.raises(RefusalError, match="no way"):
        request.generations(chat_response(({"content": None, "refusal": "no way"}, "stop")))
    with pytest.raises(OutputValidationError):
        request.generations(chat_response(({"content": '{"b":1}'}, "stop")))
    # free text cut at max_tokens is still text, as in Outlines
    free = build_request("m", "hi", None, {})
    assert free.generations(chat_response(({"content": "Once upon"}, "length")))[0].value == "Once upon"


def test_completions_responses_are_read_from_choice_text():
    request = build_request("m", "hi", int, {}, endpoint="completions")
    response = Completion.model_validate(
        {
            "id": "x",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": "42", "finish_reason": "stop", "logprobs": None}],
        }
    )
    assert request.generations(response)[0].value == 42


def chunk(content=None, finish=None, **delta):
    return ChatCompletionChunk.model_validate(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content, **delta}, "finish_reason": finish}],
        }
    )


def test_stream_reader_yields_deltas_and_checks_the_whole_text_at_the_end():
    reader = build_request("m", "hi", Item, {}, stream=True).reader()
    deltas = [reader.feed(c) for c in (chunk('{"a"', reasoning="r"), chunk(":1}"), chunk(finish="stop"))]
    assert deltas == ['{"a"', ":1}", ""]
    assert reader.reasoning == "r"
    assert reader.finish() == Item(a=1)
    cut = build_request("m", "hi", Item, {}, stream=True).reader()
    cut.feed(chunk('{"a"', finish="length"))
    with pytest.raises(TruncatedOutputError):
        cut.finish()


def test_partial_objects_report_each_new_state_once():
    partials = PartialObjects()
    seen = [p for delta in ['{"name": "Al', "", 'i", "tags": [', '"x"]}'] for p in partials.feed(delta)]
    assert seen == [{"name": "Al"}, {"name": "Ali", "tags": []}, {"name": "Ali", "tags": ["x"]}]


# --- version awareness and model discovery, against a stand-in HTTP server -------------------


class _Handler(BaseHTTPRequestHandler):
    version = "0.11.0"
    models = ("old-model",)
    content = "hello"
    posts: list[str] = []  # noqa: RUF012 - shared on purpose: the tests read what was requested
    gets: list[str] = []  # noqa: RUF012
    bodies: list[dict] = []  # noqa: RUF012
    refuse_regex = False  # answer a regex constraint with 400, as a backend without regexes would
    structured_outputs = None  # the engine settings our servers add to /version
    refuse_json = False  # answer a json constraint with 400, as vLLM does for keywords xgrammar skips

    def do_GET(self):
        type(self).gets.append(self.path)
        if self.path == "/version":
            info = {"version": self.version}
            if self.structured_outputs is not None:
                info["structured_outputs"] = self.structured_outputs
            self._json(info)
        elif self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        else:
            self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self):
        type(self).posts.append(self.path)
        sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(sent)
        if self.refuse_regex and "regex" in sent.get("structured_outputs", {}):
            self._json({"error": {"message": "regex is not supported by this backend", "code": 400}}, 400)
            return
        if self.refuse_json and "json" in sent.get("structured_outputs", {}):
            message = "The provided JSON schema contains features not supported by xgrammar."
            self._json({"error": {"message": message, "code": 400}}, 400)
            return
        self._json(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "old-model",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.content},
                    }
                ],
            }
        )

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
def old_server():
    _Handler.posts, _Handler.gets, _Handler.bodies = [], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_old_server_raises_at_first_constrained_use_and_nothing_is_sent(old_server):
    model = from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    assert isinstance(model, VLLM)
    assert model("hi") == "hello"  # free text works on any server
    assert (model.model_name, model.server_version) == ("old-model", "0.11.0")
    with pytest.raises(UnsupportedServerError, match=r"0\.11\.0"):
        model("hi", Item)
    assert _Handler.posts == ["/v1/chat/completions"]  # only the free-text call reached it
    model("hi")
    assert sorted(_Handler.gets) == ["/v1/models", "/version"]  # read once, on first use


async def test_the_async_model_checks_the_version_too(old_server):
    model = from_vllm(openai.AsyncOpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    assert isinstance(model, AsyncVLLM)
    with pytest.raises(UnsupportedServerError):
        await model("hi", Regex("a"))
    assert _Handler.posts == []


def test_a_server_that_refuses_compact_json_gets_the_plain_schema_with_a_warning(old_server, monkeypatch):
    monkeypatch.setattr(_Handler, "version", "0.32.0")
    monkeypatch.setattr(_Handler, "refuse_regex", True)
    monkeypatch.setattr(_Handler, "content", '{"a":1}')
    model = from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    with pytest.warns(CompactJSONWarning, match="refused compact JSON"):
        assert model.parse("hi", SCHEMA) == {"a": 1}
    sent = [body["structured_outputs"] for body in _Handler.bodies]
    assert list(sent[0]) == ["regex"] and sent[1] == {"json": SCHEMA}
    assert model.parse("hi", SCHEMA) == {"a": 1}  # remembered: no second refusal
    assert _Handler.bodies[-1]["structured_outputs"] == {"json": SCHEMA}
    with pytest.raises(ConstraintRejectedError, match="not supported"):
        model("hi", Regex("a"))  # a regex of the caller's own has no other form


@pytest.mark.parametrize(
    ("settings", "form"),
    [
        ({"backend": "xgrammar", "disable_any_whitespace": True}, "json"),
        ({"backend": "guidance", "disable_any_whitespace": True}, "json"),
        ({"backend": "xgrammar", "disable_any_whitespace": False}, "regex"),
        ({"backend": "auto", "disable_any_whitespace": False}, "regex"),
        (None, "regex"),  # vLLM's own /version says nothing: the regex, compact everywhere
    ],
)
def test_the_json_form_follows_what_the_server_says_of_its_engine(old_server, monkeypatch, settings, form):
    monkeypatch.setattr(_Handler, "version", "0.32.0")
    monkeypatch.setattr(_Handler, "structured_outputs", settings)
    monkeypatch.setattr(_Handler, "content", '{"a":1}')
    model = from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    assert model.parse("hi", SCHEMA) == {"a": 1}
    assert model.engine_compact is (form == "json")
    assert form in _Handler.bodies[-1]["structured_outputs"]


def test_a_compact_engine_that_refuses_a_schema_gets_its_regex_form_quietly_each_time(
    old_server, monkeypatch
):
    monkeypatch.setattr(_Handler, "version", "0.32.0")
    monkeypatch.setattr(
        _Handler, "structured_outputs", {"backend": "xgrammar", "disable_any_whitespace": True}
    )
    monkeypatch.setattr(_Handler, "refuse_json", True)
    monkeypatch.setattr(_Handler, "content", '{"a":1}')
    model = from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the answer stays compact
        assert model.parse("hi", SCHEMA) == {"a": 1}
        assert model.parse("hi", SCHEMA) == {"a": 1}
    # Per schema, not per server: the next call tries the fast form first again.
    sent = [sorted(body["structured_outputs"]) for body in _Handler.bodies]
    assert sent == [["disable_any_whitespace", "json"], ["regex"]] * 2


async def test_the_async_model_falls_back_from_compact_json_too(old_server, monkeypatch):
    monkeypatch.setattr(_Handler, "version", "0.32.0")
    monkeypatch.setattr(_Handler, "refuse_regex", True)
    monkeypatch.setattr(_Handler, "content", '{"a":1}')
    model = from_vllm(openai.AsyncOpenAI(base_url=old_server + "/v1", api_key="x", max_retries=0))
    with pytest.warns(CompactJSONWarning):
        assert await model.parse("hi", SCHEMA) == {"a": 1}
    assert [list(body["structured_outputs"]) for body in _Handler.bodies] == [["regex"], ["json"]]


def test_several_served_models_need_a_model_name(old_server, monkeypatch):
    monkeypatch.setattr(_Handler, "models", ("a", "b"))
    with pytest.raises(InvalidRequestError, match="model_name"):
        from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x"))("hi")
    named = from_vllm(openai.OpenAI(base_url=old_server + "/v1", api_key="x"), model_name="b")
    assert named("hi") == "hello"


def test_from_vllm_refuses_other_clients():
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        from_vllm(object())


def test_a_closed_port_raises_server_unavailable_naming_the_url():
    from outlines_vllm import ServerUnavailableError
    from outlines_vllm.launch import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    model = from_vllm(openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), "m")
    with pytest.raises(ServerUnavailableError, match=url):
        model("hi")
    with pytest.raises(ServerUnavailableError):
        list(model.stream("hi", int))


async def test_a_closed_port_raises_server_unavailable_async():
    from outlines_vllm import ServerUnavailableError
    from outlines_vllm.launch import free_port

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="x", max_retries=0)
    with pytest.raises(ServerUnavailableError, match="Start the server"):
        await from_vllm(client)("hi", Regex("a"))
