"""Bad requests to the Ray ingress get a 4xx with the reason, never a 5xx, and never hurt it.

Also the API key: /v1/* answers 401 without it, /health and /metrics stay open.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.prometheus import metric_sum
from tests.ray_app import SERVED_NAME

MSG = [{"role": "user", "content": "Say hi."}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": SERVED_NAME, "messages": MSG, "max_tokens": 4, **fields}


def so(**constraint: Any) -> dict[str, Any]:
    return chat(structured_outputs=constraint)


BROKEN_JSON = [b"{", b"{'model': 'x'}", b'{"model": "smollm2",}', b"\xff\xfe", b"", b"nul", b'{"a": 1}}']
NOT_OBJECTS = [b"[]", b"42", b'"text"', b"null"]
BAD_SCHEMAS = [
    {"type": 5},
    {"type": "object", "properties": []},
    {"type": "object", "required": "name"},
    {"type": "string", "minLength": -1},
    {"type": "array", "items": 3},
    {"anyOf": {}},
    "{not json",
    "[1, 2]",
    7,
]
BAD_REGEXES = ["[a-", "(ab", "a{2,1}", "*a", "(?P<x>a)(?P<x>b)", "\\", "", 12]
WRONG_TYPES = [
    chat(model=5),
    chat(model=None, messages="hi"),
    chat(messages="hi"),
    chat(messages=[]),
    chat(messages=["hi"]),
    chat(messages=[{"content": "no role"}]),
    chat(messages=[{"role": "user", "content": 5}]),
    chat(max_tokens="4"),
    chat(max_tokens=0),
    chat(max_tokens=-3),
    chat(max_tokens=1.5),
    chat(n="2"),
    chat(temperature="hot"),
    chat(temperature=True),
    chat(top_p=[1]),
    chat(stream="yes"),
    chat(stop=5),
    chat(stop=[1, 2]),
    chat(structured_outputs="json"),
    chat(structured_outputs={}),
    chat(structured_outputs={"json": {"type": "object"}, "regex": "a+"}),
    so(choice=[]),
    so(choice="a"),
    so(choice=[1, 2]),
    so(grammar=""),
    so(grammar=5),
    so(json_object="yes"),
    chat(response_format={"type": "xml"}),
    chat(response_format="json"),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
    chat(guided_json={"type": "object"}),
    chat(guided_regex="a+"),
    chat(guided_choice=["a", "b"]),
]
BAD_COMPLETIONS = [
    {"model": SERVED_NAME, "max_tokens": 4},
    {"model": SERVED_NAME, "prompt": 5, "max_tokens": 4},
    {"model": SERVED_NAME, "prompt": [], "max_tokens": 4},
    {"model": SERVED_NAME, "prompt": [{"text": "x"}], "max_tokens": 4},
]
UNKNOWN_MODELS = [chat(model="gpt-4"), chat(model=""), {"model": "nope", "prompt": "hi"}]
# Valid for the ingress, refused by vLLM itself: its 4xx must reach the client unchanged.
ENGINE_REFUSALS = [
    chat(max_tokens=100_000),
    chat(temperature=-1.0),
    so(regex="(?=a)b"),  # Python's re accepts look-arounds, vLLM's regex engine does not
    so(json={"type": "string", "pattern": "(?<=a)b"}),
    so(json={"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
    so(grammar="root ::= ("),
    so(grammar="this is not a grammar"),
    so(structural_tag="{bad"),
]


def cases() -> list[tuple[str, str, bytes]]:
    out: list[tuple[str, str, bytes]] = []
    out += [("broken json", CHAT, body) for body in BROKEN_JSON]
    out += [("not an object", CHAT, body) for body in NOT_OBJECTS]
    out += [("invalid schema", CHAT, json.dumps(so(json=s)).encode()) for s in BAD_SCHEMAS]
    out += [
        (
            "invalid schema (response_format)",
            CHAT,
            json.dumps(
                chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": s}})
            ).encode(),
        )
        for s in BAD_SCHEMAS[:4]
    ]
    out += [("bad regex", CHAT, json.dumps(so(regex=r)).encode()) for r in BAD_REGEXES]
    out += [("wrong field type", CHAT, json.dumps(body).encode()) for body in WRONG_TYPES]
    out += [("bad completion", COMPLETIONS, json.dumps(body).encode()) for body in BAD_COMPLETIONS]
    out += [("unknown model", CHAT, json.dumps(body).encode()) for body in UNKNOWN_MODELS]
    out += [("engine refusal", CHAT, json.dumps(body).encode()) for body in ENGINE_REFUSALS]
    deep_body = b'{"model": "smollm2", "a": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    level = b'{"type": "object", "required": ["a"], "properties": {"a": '
    deep_schema = level * 300 + b'{"type": "string"}' + b"}}" * 300  # as text: json.dumps would recurse
    so_deep = json.dumps(so(json={})).encode().replace(b'"json": {}', b'"json": ' + deep_schema)
    out += [("nested thousands deep", CHAT, deep_body), ("schema nested 300 deep", CHAT, so_deep)]
    huge = json.dumps(chat(messages=[{"role": "user", "content": "x" * (5 << 20)}])).encode()
    out += [("oversized body", CHAT, huge), ("oversized body", COMPLETIONS, huge)]
    return out


def error_message(response: httpx.Response) -> str:
    body = response.json()
    error = body.get("error") or {}
    return (error.get("message") if isinstance(error, dict) else str(error)) or body.get("detail") or ""


def test_malformed_requests_get_4xx_with_a_reason_and_never_5xx(ray_server: Any) -> None:
    all_cases = cases()
    assert len(all_cases) >= 50
    headers = {"Authorization": f"Bearer {ray_server.api_key}", "Content-Type": "application/json"}
    before = ray_server.metrics()
    failures = []
    with httpx.Client(base_url=ray_server.base_url, timeout=60) as client:
        for what, path, body in all_cases:
            response = client.post(path, content=body, headers=headers)
            message = error_message(response) if response.content else ""
            if not (400 <= response.status_code < 500 and message):
                failures.append((what, body[:80], response.status_code, response.text[:200]))
        assert client.get("/health").status_code == 200
        # The service still generates after all that.
        ok = client.post(CHAT, json=chat(), headers=headers)
        assert ok.status_code == 200, ok.text
    assert not failures, failures
    time.sleep(3)  # replicas publish their metrics every 2 s
    after = ray_server.metrics()
    counted = sum(
        metric_sum(after, "outlines_vllm_requests_total", status=code)
        - metric_sum(before, "outlines_vllm_requests_total", status=code)
        for code in ("400", "404", "413")
    )
    assert counted == len(all_cases), "every rejected request is counted by its status"


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/v1/models"])
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_v1_needs_the_api_key(ray_server: Any, path: str, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = chat() if path == CHAT else {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 2}
    with httpx.Client(base_url=ray_server.base_url, timeout=30) as client:
        response = (
            client.get(path, headers=headers)
            if path == "/v1/models"
            else client.post(path, json=body, headers=headers)
        )
    assert response.status_code == 401
    assert "API key" in error_message(response)


def test_health_and_metrics_are_open_without_a_key(ray_server: Any) -> None:
    with httpx.Client(base_url=ray_server.base_url, timeout=30) as client:
        health = client.get("/health")
        metrics = client.get("/metrics")
    assert health.status_code == 200 and health.json()["replicas"] == {SERVED_NAME: 2}
    assert metrics.status_code == 200 and "outlines_vllm_requests_total" in metrics.text
