"""Every Kubernetes object of every committed stack, validated strictly against the
Kubernetes schemas kubernetes-validate ships (split from test_infra_stacks.py)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from infra_harness import kubernetes_objects, run_stack_file, stack_files, stack_name

K8S_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]
STACKS = {stack_name(p): p for p in stack_files()}


#: DRA mode needs resource.k8s.io/v1 (GA, and in the schemas, from Kubernetes 1.34; the
#: pods' resourceClaims[].resourceClaimTemplateName from 1.31): its stacks are validated
#: against 1.34 and the latest schemas instead of 1.30.
DRA_K8S_VERSIONS = ["1.34", kubernetes_validate.utils.latest_version()]


@pytest.mark.parametrize("path", list(STACKS.values()), ids=list(STACKS))
def test_every_object_passes_strict_schema_validation(path: Path) -> None:
    run = run_stack_file(path)
    objects = kubernetes_objects(run.mocks)
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "ServiceAccount"} <= kinds
    checked = 0
    versions = DRA_K8S_VERSIONS if run.outputs["allocationApi"] == "dra" else K8S_VERSIONS
    for version in versions:
        for obj in objects:
            checked += 1
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} {name} k8s {version}: {exc.caused_by.message}")
    assert checked == 2 * len(objects)


def test_strict_validation_would_catch_a_bad_field() -> None:
    """Guard: the conversion keeps unknown fields, so strict mode has something to bite."""
    objects = kubernetes_objects(run_stack_file(STACKS["dev"]).mocks)
    (obj,) = [o for o in objects if o["kind"] == "DaemonSet"]
    kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    obj["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
