"""The server app's pure parts, without Ray or an engine: request checks, metrics merging,
output checks, configuration (flags and server/serve-config.yaml) and the Serve options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from outlines_vllm import metrics
from outlines_vllm.cli import build_parser
from outlines_vllm.server.app import engine_options, placement_bundles
from outlines_vllm.server.cli import config_from_args
from outlines_vllm.server.config import AppConfig, ModelConfig
from outlines_vllm.server.exposition import merge
from outlines_vllm.server.observe import Observation
from outlines_vllm.server.replica import cpu_cores, parse_vllm_args, vllm_argv
from outlines_vllm.server.validation import CHAT, COMPLETIONS, BadRequest, inspect_request

CONFIG = Path(__file__).resolve().parents[2] / "server" / "serve-config.yaml"
MODELS = {"smollm2", "other"}
MSG = [{"role": "user", "content": "hi"}]


def check(body: object, endpoint: str = CHAT, header: str | None = None, models: set[str] = MODELS):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return inspect_request(raw, endpoint, models, header)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"model": "smollm2", "messages": MSG}, "none"),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"json": {"type": "object"}}}, "json"),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"regex": "a+"}}, "regex"),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"choice": ["a"]}}, "choice"),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"grammar": "root ::= 'a'"}}, "grammar"),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"json_object": True}}, "json_object"),
        ({"model": "smollm2", "messages": MSG, "response_format": {"type": "json_object"}}, "json_object"),
        ({"model": "smollm2", "messages": MSG, "response_format": {"type": "text"}}, "none"),
        (
            {
                "model": "smollm2",
                "messages": MSG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                },
            },
            "json",
        ),
    ],
)
def test_constraint_kind_comes_from_the_body(body: dict, kind: str) -> None:
    info = check(body)
    assert info.kind == kind
    assert info.body == json.dumps(body).encode(), "the body is forwarded untouched"


def test_the_client_header_names_compact_json_sent_as_a_grammar() -> None:
    body = {"model": "smollm2", "messages": MSG, "structured_outputs": {"grammar": "root ::= '{}'"}}
    info = check(body, header="json")
    assert (info.kind, info.json_text, info.spec) == ("json", True, None)
    assert check(body, header="bogus").kind == "grammar", "unknown header values are ignored"


def test_a_missing_model_is_filled_in_only_when_one_model_is_served() -> None:
    info = check({"prompt": "hi"}, COMPLETIONS, models={"smollm2"})
    assert info.model == "smollm2" and json.loads(info.body)["model"] == "smollm2"
    with pytest.raises(BadRequest, match="'model' is required"):
        check({"prompt": "hi"}, COMPLETIONS)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        ({"model": "gpt-4", "messages": MSG}, 404, "does not exist"),
        (
            {"model": "smollm2", "messages": MSG, "structured_outputs": {"json": {"type": 3}}},
            400,
            "invalid JSON schema",
        ),
        ({"model": "smollm2", "messages": MSG, "structured_outputs": {"regex": "(a"}}, 400, "invalid regex"),
        ({"model": "smollm2", "messages": MSG, "guided_json": {}}, 400, "removed in vLLM 0.12"),
        ({"model": "smollm2", "messages": MSG, "max_tokens": "3"}, 400, "positive integer"),
        ({"model": "smollm2", "messages": "hi"}, 400, "non-empty list"),
    ],
)
def test_client_mistakes_are_4xx_with_the_reason(body: object, status: int, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check(body)
    assert caught.value.status == status
    assert fragment in caught.value.body()["error"]["message"]


def test_merge_makes_one_valid_exposition_with_source_labels() -> None:
    vllm = (
        "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="smollm2"} 1.0\n'
    )
    ours = '# HELP outlines_vllm_x_total X.\n# TYPE outlines_vllm_x_total counter\noutlines_vllm_x_total{model="m"} 2.0\n'
    text = merge([(vllm, {"replica": "a"}), (vllm, {"replica": "b"}), (ours, {"ingress": "i"})]).decode()
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    replicas = sorted(s.labels["replica"] for s in families["vllm:num_requests_running"].samples)
    assert replicas == ["a", "b"]
    assert families["outlines_vllm_x"].samples[0].labels == {"model": "m", "ingress": "i"}


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_observation_counts_truncated_and_invalid_outputs() -> None:
    body = {"model": "smollm2", "messages": MSG, "structured_outputs": {"regex": "[0-9]+"}}
    labels = {"model": "smollm2", "constraint": "regex", "replica": "r9"}
    before = (
        _sample(metrics.NAMES["structured_invalid"], **labels),
        _sample(metrics.NAMES["structured_truncated"], **labels),
    )
    for content, finish in [("42", "stop"), ("4x", "stop"), ("12", "length")]:
        observation = Observation(CHAT, replica="r9")
        observation.routed(check(body))
        response = {"choices": [{"index": 0, "message": {"content": content}, "finish_reason": finish}]}
        observation.response(
            json.dumps({**response, "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
        )
        observation.record(200)
    after = (
        _sample(metrics.NAMES["structured_invalid"], **labels),
        _sample(metrics.NAMES["structured_truncated"], **labels),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    requests = _sample(metrics.NAMES["requests"], endpoint=CHAT, status="200", **labels)
    assert requests >= 3


def test_observation_reads_a_split_sse_stream() -> None:
    observation = Observation(COMPLETIONS, replica="r8")
    observation.routed(
        check(
            {"model": "smollm2", "prompt": "x", "stream": True, "structured_outputs": {"choice": ["yes"]}},
            COMPLETIONS,
        )
    )
    stream = b'data: {"choices":[{"index":0,"text":"ye"}]}\n\ndata: {"choices":[{"index":0,"text":"s","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    for i in range(0, len(stream), 7):
        observation.sse(stream[i : i + 7])
    assert observation.texts == {0: ["ye", "s"]} and observation.finish_reasons == {0: "stop"}
    assert observation.first_token is not None and observation.chunks == 2


def test_serve_config_file_is_a_valid_app_config() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    app = config["applications"][0]
    assert app["import_path"] == "outlines_vllm.server.app:build_app"
    assert config["http_options"]["port"] == 8000
    parsed = AppConfig.model_validate(app["args"])
    assert parsed.models[0].served_name == "smollm2"
    options = engine_options(parsed.models[0], parsed)
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 2, 8)
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (30, 600)
    assert options["graceful_shutdown_timeout_s"] == 30 and options["ray_actor_options"]["num_gpus"] in (0, 1)


def test_build_app_makes_the_first_models_deployment_the_ingress_and_routes_to_the_others() -> None:
    from outlines_vllm.server.app import build_app

    app = build_app({"models": [{"model": "a", "name": "a", "replicas": 2}, {"model": "b", "name": "b"}]})
    first = app._bound_deployment
    assert first.name == "engine-a" and first._deployment_config.num_replicas == 2
    model, others, hub, config = first.init_args
    assert model.served_name == "a" and [m.served_name for m in config.models] == ["a", "b"]
    assert {name: d._bound_deployment.name for name, d in others.items()} == {"b": "engine-b"}
    assert others["b"]._bound_deployment.init_args[1] == {}  # b serves only itself
    # One HTTP (ASGI) deployment per app, as Serve requires: only the first model's.
    assert hasattr(first.func_or_class, "_set_asgi_app")
    assert not hasattr(others["b"]._bound_deployment.func_or_class, "_set_asgi_app")
    assert hub._bound_deployment.name == "metrics-hub"


def test_prefix_affinity_puts_a_request_router_in_front_of_haproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from outlines_vllm.server.app import PREFIX_ROUTER, build_app
    from outlines_vllm.server.proxy import proxy_env

    models = [{"model": "a", "name": "a", "routing": "prefix_affinity"}, {"model": "b", "name": "b"}]
    for name, value in proxy_env("serve").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="needs the HAProxy proxy"):
        build_app({"models": models})
    for name, value in proxy_env("haproxy").items():
        monkeypatch.setenv(name, value)
    assert proxy_env("haproxy")["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "1"  # the prompt
    app = build_app({"models": models})
    config = app._bound_deployment._deployment_config.request_router_config
    assert config.request_router_class == PREFIX_ROUTER
    router = app._ingress_request_router._bound_deployment
    assert router.name == "request-router" and router.init_kwargs["server"] is app
    _, others, _, _ = app._bound_deployment.init_args
    default = others["b"]._bound_deployment._deployment_config.request_router_config
    assert default.is_default_request_router()  # "balanced" stays Serve's power of two choices
    assert build_app({"model": "a"})._ingress_request_router is None


def test_haproxy_servers_up_counts_the_app_replicas_it_routes_to(tmp_path: Path) -> None:
    import socket
    import threading

    from outlines_vllm.server.proxy import haproxy_servers_up

    stat = (
        "# pxname,svname,status,bck\n"
        "http_frontend,FRONTEND,OPEN,\n"
        "app,r1,UP,0\n"
        "app,r2,DOWN,0\n"
        "app,r3,UP 1/2,0\n"
        "app,fallback,UP,1\n"
        "app,BACKEND,UP,0\n"
        "app-via-ingress-request-router,r1,UP,0\n"
    )
    path = str(tmp_path / "admin.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            assert conn.recv(100) == b"show stat\n"
            conn.sendall(stat.encode())

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert haproxy_servers_up(path) == 2  # r1 and r3 (UP, going down: still routed to)
    finally:
        thread.join(5)
        server.close()


def test_replicas_within_a_node_reserve_gpus_and_no_placement_group() -> None:
    model = ModelConfig(model="m", tensor_parallel_size=4, gpus_per_replica=4)
    options = engine_options(model, AppConfig(models=[model]))
    assert options["ray_actor_options"] | {"runtime_env": None} == {
        "num_cpus": 1,
        "num_gpus": 4,
        "runtime_env": None,
    }
    assert "placement_group_bundles" not in options
    assert placement_bundles(model, 4) is None


def test_pipeline_parallel_replicas_ask_ray_for_one_bundle_per_worker_across_nodes() -> None:
    model = ModelConfig(
        model="m", tensor_parallel_size=2, pipeline_parallel_size=2, gpus_per_replica=1, replica_cpus=2
    )
    options = engine_options(model, AppConfig(models=[model]))
    assert options["placement_group_bundles"] == [
        {"GPU": 1.0, "CPU": 2.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
    ]
    assert options["placement_group_strategy"] == "PACK"  # stages may sit on different nodes
    assert (options["ray_actor_options"]["num_cpus"], options["ray_actor_options"]["num_gpus"]) == (2, 0)
    # CPU-only cluster: a CPU per worker instead of a GPU.
    cpu = ModelConfig(model="m", pipeline_parallel_size=2, gpus_per_replica=0)
    assert placement_bundles(cpu, 0) == [{"CPU": 2.0}, {"CPU": 1.0}]
    argv = vllm_argv(model, "/models/m")
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"


def test_engine_options_reach_vllm_through_engine_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "outlines_vllm.server.replica.engine_kwargs", lambda **kw: {"project_default": 1, **kw}
    )
    argv = vllm_argv(
        ModelConfig(model="m", name="x", engine={"max_num_seqs": 8}, vllm_args=["--seed", "1"]), "/m"
    )
    assert argv[:4] == ["--model", "/m", "--served-model-name", "x"]
    assert argv[-2:] == ["--seed", "1"]
    assert "--project-default" in argv and argv[argv.index("--max-num-seqs") + 1] == "8"
    monkeypatch.undo()
    so = {"backend": "xgrammar", "disable_any_whitespace": True}  # a config object: JSON for vLLM
    argv = vllm_argv(ModelConfig(model="m", engine={"structured_outputs_config": so}), "/m")
    assert json.loads(argv[argv.index("--structured-outputs-config") + 1]) == so
    args = parse_vllm_args(argv)
    assert args.structured_outputs_config.disable_any_whitespace is True


def test_config_rejects_typos_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="replicaz"):
        AppConfig.model_validate({"models": [{"model": "a", "replicaz": 2}]})
    with pytest.raises(ValueError, match="unique"):
        AppConfig.model_validate({"models": [{"model": "a", "name": "x"}, {"model": "b", "name": "x"}]})
    single = AppConfig.model_validate({"model": "m", "replicas": 3, "api_key": "k"})
    assert single.models == [ModelConfig(model="m", replicas=3)] and single.api_key == "k"


def test_cli_flags_become_the_app_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "/m",
            "--min-replicas",
            "1",
            "--max-replicas",
            "3",
            "--api-key",
            "k",
            "--",
            "--max-num-seqs",
            "8",
        ]
    )
    config = config_from_args(args)
    model = config.models[0]
    assert (model.min_replicas, model.max_replicas, model.replicas) == (1, 3, None)
    assert model.vllm_args == ["--max-num-seqs", "8"] and config.api_key == "k" and args.port == 8000
    fixed = config_from_args(build_parser().parse_args(["serve", "--replicas", "2"]))
    assert fixed.models[0].replicas == 2
    with pytest.raises(SystemExit, match="--replicas fixes the count"):
        config_from_args(build_parser().parse_args(["serve", "--replicas", "2", "--max-replicas", "3"]))


def test_each_replica_gets_its_own_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert [cpu_cores(rank, 1) for rank in range(3)] == ["0", "1", "0"]
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [cpu_cores(rank, 4) for rank in range(2)] == ["0-3", "4-7"]


def test_each_app_gets_replica_ports_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps on one machine must not share Serve's default replica ports (30000 up)."""
    import socket

    from outlines_vllm.server import proxy

    for name in [n for n in os.environ if n.startswith("RAY_SERVE_")]:
        monkeypatch.delenv(name)
    first, second = proxy.private_haproxy_env(), proxy.private_haproxy_env()
    for env in (first, second):
        low, high = (
            int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
            int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]),
        )
        assert high - low + 1 == proxy.PORT_BLOCK and high < 32768  # below the ephemeral ports
        assert int(env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]) == high + 1
    # A block with one port taken is never chosen.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 20050))
        blocks = {proxy.free_port_block(100, range(20000, 20200)) for _ in range(20)}
    assert blocks == {20100}
