"""The k8s/ bundle against running servers: metric names, label names, probe paths and ports.

Alerts and the dashboard must read series the servers really export: every ``vllm:`` name from
the real vLLM server (the plain layout scrapes it) and from the Ray ingress (the Ray layout
scrapes that), every ``outlines_vllm_`` name from the ingress. A real Prometheus (Debian's)
scrapes both like the ServiceMonitor/PodMonitor would (job ``outlines-vllm``, a ``namespace``
label) and evaluates every dashboard query: each must return series, so label names in
``sum by (...)`` and selectors are right too. Probes must hit paths the servers answer on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlines_vllm import k8s
from tests.conftest import SERVED_NAME
from tests.prometheus import Prometheus, metric_sum, scrape, wait_for

ROOT = Path(__file__).resolve().parents[2] / "k8s"
NAMESPACE = "outlines-vllm"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
# A choice cut short by stop strings: "y" or "n" is no valid choice (an invalid structured output).
CUT_CHOICE = {"max_tokens": 8, "structured_outputs": {"choice": ["yes", "no"]}, "stop": ["e", "o"]}
BAD_PER_ROUND = 6


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: k8s.build(ROOT / "overlays" / name) for name in ("plain", "ray")}


@pytest.fixture(scope="module")
def used(built: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Every metric name the alert rules and the dashboard read."""
    exprs = [rule["expr"] for group in k8s.rule_groups(built["plain"]) for rule in group["rules"]]
    for dashboard in k8s.dashboards(built["plain"]):
        exprs += k8s.dashboard_exprs(dashboard)
    names = k8s.metric_names(exprs)
    assert any(n.startswith("vllm:") for n in names) and any(n.startswith("outlines_vllm_") for n in names)
    return names


def test_vllm_metrics_of_alerts_and_dashboard_are_exported_by_the_vllm_server(
    plain_traffic: Any, used: set[str]
) -> None:
    wanted = {n for n in used if n.startswith("vllm:")}
    assert wanted - set(scrape(plain_traffic.base_url)) == set()


def test_every_metric_of_alerts_and_dashboard_is_exported_by_the_ingress(
    ray_traffic: Any, used: set[str]
) -> None:
    """The Ray layout scrapes only the ingress: it must show our metrics and the engines' vllm: ones."""
    names = set(scrape(ray_traffic.base_url))
    assert used - names == set()


@pytest.fixture(scope="module")
def prometheus(
    vllm_server: Any, ray_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping both servers as the monitors in k8s/ would label them."""
    targets = [server.base_url.removeprefix("http://") for server in (vllm_server, ray_server)]
    with Prometheus(tmp_path_factory.mktemp("k8s-prometheus")) as prometheus:
        prometheus.start(targets, labels={"namespace": NAMESPACE}).wait_until_up(2)
        yield prometheus


def scraped(prometheus: Prometheus, server: Any, name: str) -> None:
    """Wait until Prometheus holds the server's current total of counter ``name`` (all series).

    The total is read again at each try: the ingress's view of the other replicas' counters lags
    by up to one push to the metrics hub (2 s), so a first read may be short of the final one."""
    promql = f'sum({name}{{instance="{server.base_url.removeprefix("http://")}"}})'
    seen: list[tuple[float, float | None]] = []

    def caught_up() -> bool:
        result = prometheus.query(promql)
        held = float(result[0]["value"][1]) if result else None
        seen.append((metric_sum(scrape(server.base_url), name), held))
        return held == seen[-1][0]

    assert wait_for(caught_up, 60), (
        f"Prometheus never caught up with {name}: (server, Prometheus) {seen[-3:]}"
    )


@pytest.fixture(scope="module")
def plain_traffic(vllm_server: Any, openai_client: Any, prometheus: Prometheus) -> Any:
    """Finished requests (two rounds, scraped between), so histograms and rates have samples."""
    for _ in range(2):
        reply = openai_client.chat.completions.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
        )
        assert reply.choices[0].message.content
        scraped(prometheus, vllm_server, "vllm:request_success_total")
    return vllm_server


@pytest.fixture(scope="module")
def ray_traffic(ray_server: Any, prometheus: Prometheus) -> Any:
    """Through the ingress, twice (scraped between): a valid and truncated (max_tokens) JSON
    outputs, invalid choices (cut by stop strings), a streamed one (the ingress's time to first
    token) and a request vLLM refuses (an error status)."""
    headers = {"Authorization": f"Bearer {ray_server.api_key}"}
    base = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "structured_outputs": {"json": SCHEMA},
    }
    with httpx.Client(base_url=ray_server.base_url, headers=headers, timeout=120) as client:
        for _ in range(2):
            # Series carry a `replica` label, and rate() needs one that grows between scrapes: six
            # of each bad kind per round make "each round on a different replica" (1 in 2000) moot.
            for extra in ({"max_tokens": 40}, *[{"max_tokens": 2}, CUT_CHOICE] * BAD_PER_ROUND):
                response = client.post("/v1/chat/completions", json={**base, **extra})
                assert response.status_code == 200, response.text
            with client.stream(
                "POST", "/v1/chat/completions", json={**base, "max_tokens": 8, "stream": True}
            ) as stream:
                assert stream.status_code == 200 and "".join(stream.iter_text())
            # Past the model's context: the ingress routes it, vLLM refuses it.
            assert (
                client.post("/v1/chat/completions", json={**base, "max_tokens": 100_000}).status_code == 400
            )
            scraped(prometheus, ray_server, "outlines_vllm_requests_total")
    return ray_server


def test_every_dashboard_query_returns_series(
    built: dict, plain_traffic: Any, ray_traffic: Any, prometheus: Prometheus
) -> None:
    (dashboard,) = k8s.dashboards(built["plain"])
    values = {"$namespace": NAMESPACE, "$model": SERVED_NAME, "$__rate_interval": "1m"}
    empty = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            if not prometheus.query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert empty == []


def test_alert_queries_evaluate_on_real_series(
    built: dict, plain_traffic: Any, ray_traffic: Any, prometheus: Prometheus
) -> None:
    """The structured-output alerts' conditions hold on the deliberately bad traffic (most JSON
    outputs truncated, every choice invalid); the availability alerts' conditions do not."""
    rules = {
        rule["alert"]: rule["expr"] for group in k8s.rule_groups(built["plain"]) for rule in group["rules"]
    }
    holding = {alert for alert, expr in rules.items() if prometheus.query(expr)}
    assert {
        "OutlinesVLLMStructuredOutputInvalidRising",
        "OutlinesVLLMStructuredOutputTruncatedRising",
    } <= holding
    assert holding.isdisjoint(
        {"OutlinesVLLMTargetDown", "OutlinesVLLMNoHealthyTarget", "OutlinesVLLMEngineReplicaDown"}
    )
    for name in k8s.metric_names(rules.values()):  # every selector inside them matches real series
        assert prometheus.query(f'{name}{{namespace="{NAMESPACE}"}}'), name


def test_server_probes_are_answered_on_the_container_port(built: dict, vllm_server: Any) -> None:
    c = built["plain"]
    deployment = k8s.of_kind(c, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in deployment["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = deployment[probe]["httpGet"]
        assert port[get["port"]] == 8000
        assert httpx.get(vllm_server.base_url + get["path"], timeout=10).status_code == 200, probe


def test_ray_probes_on_the_serve_port_are_answered_by_the_ingress(built: dict, ray_server: Any) -> None:
    ray = k8s.of_kind(built["ray"], "RayService")[0]
    checked = 0
    for _, pod in k8s.pod_specs(ray):
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            if (
                ports.get(get["port"]) == 8000
            ):  # the Serve port; 52365 is Ray's own agent (KubeRay's default check)
                status, _ = ray_server.get(get["path"])
                assert status == 200, f"{probe} {get['path']}"
                checked += 1
    assert checked == 2  # head readiness (/health), worker readiness (/-/healthz)
