"""Offline validation of the manifests: Volcano's Job against the CRD schema shipped in
schemas/ (jsonschema), everything core (ConfigMaps, each task's pod template as a v1
PodTemplate) against Kubernetes' own OpenAPI schemas (kubernetes-validate, no cluster)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

SCHEMA = Path(__file__).parent / "schemas" / "volcano-job-v1alpha1.json"
K8S_VERSION = "1.32"


@cache
def _volcano() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _core(doc: dict[str, Any], where: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise UserError(
            f"{exc.message} (Kubernetes {K8S_VERSION} schema)", field=f"{where}.{path}"
        ) from None


def validate(doc: dict[str, Any]) -> None:
    """UserError with the first violation, naming the manifest and the field."""
    name = doc.get("metadata", {}).get("name", "?")
    if doc.get("apiVersion") != "batch.volcano.sh/v1alpha1":
        _core(doc, f"{doc.get('kind')}/{name}")
        return
    errors = sorted(_volcano().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        raise UserError(f"{err.message} (Volcano Job schema)", field=f"Job/{name}.{path}")
    for task in doc["spec"]["tasks"]:
        pod = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{name}-{task['name']}"},
            "template": task["template"],
        }
        _core(pod, f"Job/{name}.spec.tasks.{task['name']}")
