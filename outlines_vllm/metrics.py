"""Every ``outlines_vllm_`` Prometheus metric, defined once.

The Ray Serve ingress (``outlines_vllm.server``) records these and serves them at ``/metrics``
(port 8000 by default), together with each engine replica's own ``vllm:`` metrics. Every series
that concerns one engine replica carries a ``replica`` label (the Serve replica that served the
request, empty when the ingress answered by itself, e.g. a 4xx before routing); each ingress
process adds an ``ingress`` label to its own series so several ingress replicas never collide:
aggregate with ``sum by (...)`` in PromQL.

Label values:

- ``model``: the served model name the request asked for (``unknown`` when no such model is
  served, so bad requests cannot blow up cardinality).
- ``endpoint``: the request path, e.g. ``/v1/chat/completions``.
- ``constraint``: the constraint kind from ``OutputSpec.kind`` in ``types.py``: ``json``,
  ``regex``, ``choice``, ``grammar``, ``json_object``, ``structural_tag`` or ``none``. Taken
  from the ``X-Outlines-Constraint`` header our clients send (compact JSON travels as a grammar
  but is labelled ``json``), else derived from the body's ``structured_outputs`` /
  ``response_format``.
- ``status``: the HTTP status code the client got, as text (``200``, ``400``, ...).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Our own registry: /metrics shows these and the replicas' vllm: metrics, not process internals.
REGISTRY = CollectorRegistry(auto_describe=True)

NAMESPACE = "outlines_vllm"
REQUEST_LABELS = ("model", "endpoint", "constraint", "replica")
STRUCTURED_LABELS = ("model", "constraint", "replica")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

REQUESTS = Counter(
    "requests",
    "Requests answered by the ingress, by model, endpoint, constraint kind, HTTP status and replica.",
    (*REQUEST_LABELS, "status"),
    namespace=NAMESPACE,
    registry=REGISTRY,
)  # exposed as outlines_vllm_requests_total
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "Time from the request reaching the ingress to the last byte of its response.",
    REQUEST_LABELS,
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "time_to_first_token_seconds",
    "Streaming requests: time from the request reaching the ingress to the first generated text.",
    REQUEST_LABELS,
    namespace=NAMESPACE,
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Histogram(
    "prompt_tokens",
    "Prompt tokens per request (from the response's usage).",
    REQUEST_LABELS,
    namespace=NAMESPACE,
    buckets=TOKEN_BUCKETS,
    registry=REGISTRY,
)
GENERATION_TOKENS = Histogram(
    "generation_tokens",
    "Generated tokens per request (usage, or streamed chunks when the stream carries no usage).",
    REQUEST_LABELS,
    namespace=NAMESPACE,
    buckets=TOKEN_BUCKETS,
    registry=REGISTRY,
)
STRUCTURED_INVALID = Counter(
    "structured_output_invalid",
    "Constrained outputs the ingress saw finish that do not parse/validate as their constraint "
    "(json schema, regex, choice, json_object; grammars are not checked).",
    STRUCTURED_LABELS,
    namespace=NAMESPACE,
    registry=REGISTRY,
)  # exposed as outlines_vllm_structured_output_invalid_total
STRUCTURED_TRUNCATED = Counter(
    "structured_output_truncated",
    "Constrained outputs cut off by max_tokens (finish_reason 'length'): incomplete by definition.",
    STRUCTURED_LABELS,
    namespace=NAMESPACE,
    registry=REGISTRY,
)  # exposed as outlines_vllm_structured_output_truncated_total
IN_FLIGHT = Gauge(
    "requests_in_flight",
    "Requests the ingress is working on right now.",
    ("model", "endpoint"),
    namespace=NAMESPACE,
    registry=REGISTRY,
)
REPLICA_UP = Gauge(
    "replica_up",
    "1 for each engine replica whose vLLM engine answered its last health check.",
    ("model", "replica"),
    namespace=NAMESPACE,
    registry=REGISTRY,
)

# Names as they appear in the exposition (for dashboards, alerts and tests).
NAMES = {
    "requests": "outlines_vllm_requests_total",
    "request_duration": "outlines_vllm_request_duration_seconds",
    "time_to_first_token": "outlines_vllm_time_to_first_token_seconds",
    "prompt_tokens": "outlines_vllm_prompt_tokens",
    "generation_tokens": "outlines_vllm_generation_tokens",
    "structured_invalid": "outlines_vllm_structured_output_invalid_total",
    "structured_truncated": "outlines_vllm_structured_output_truncated_total",
    "in_flight": "outlines_vllm_requests_in_flight",
    "replica_up": "outlines_vllm_replica_up",
}
