"""One test per stack file (read as the CLI reads it), the whole program under mocks, and
every Kubernetes object each stack would create validated strictly."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml
from infra_harness import (
    FAKE_DIGEST,
    ROOT,
    Run,
    fake_decrypt,
    is_secret,
    kubernetes_objects,
    manifest,
    read_stack,
    run_program,
    run_stack_file,
    stack_files,
    stack_name,
    unsecret,
)

from infra.components.image import host_platform
from infra.image_spec import read_version
from workloads.samples import unversioned

VERSION = read_version()
SHA12 = "0123456789ab"

STACKS = {stack_name(p): p for p in stack_files()}


def test_every_stack_file_has_its_own_test() -> None:
    tested = {name[len("test_stack_"):].replace("_", "-") for name in globals()
              if name.startswith("test_stack_")}
    assert set(STACKS) == tested
    assert {"dev", "edge-pool", "ultra-prod", "e2e", "dra-example"} <= set(STACKS)


def daemonset(run: Run) -> dict[str, Any]:
    return manifest(run.mocks.one("kubernetes:apps/v1:DaemonSet"))


def plugin_env(run: Run) -> dict[str, str]:
    c = daemonset(run)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def workload_requests(run: Run) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for obj in kubernetes_objects(run.mocks):
        if obj["kind"] in ("Pod", "Deployment", "Job"):
            spec = obj["spec"]
            pod = spec["template"]["spec"] if "template" in spec else spec
            limits = pod["containers"][0]["resources"]["limits"]
            out[unversioned(obj["metadata"]["name"])] = {
                k: v for k, v in limits.items() if k.startswith("qualcomm.com/")
            }
    return out


def k8s_providers(run: Run) -> list[dict[str, Any]]:
    return [r.inputs for r in run.mocks.of_type("pulumi:providers:kubernetes")]


def assert_all_k8s_on_the_stack_provider(run: Run) -> None:
    (provider,) = run.mocks.of_type("pulumi:providers:kubernetes")
    for rec in run.mocks.resources:
        if rec.typ.startswith("kubernetes:"):
            assert rec.provider and f"::{provider.name}::" in rec.provider, rec.name


def test_stack_dev() -> None:
    run = run_stack_file(STACKS["dev"])
    o = run.outputs
    # Rendered, not applied: the provider writes manifests to <repo>/out/manifests/dev, an
    # absolute path, whatever the working directory.
    (prov,) = k8s_providers(run)
    assert prov["renderYamlToDirectory"] == str(ROOT / "out" / "manifests" / "dev")
    assert "context" not in prov
    assert o["renderYamlDir"] == prov["renderYamlToDirectory"]
    assert_all_k8s_on_the_stack_provider(run)
    # Built for this machine's platform only and loaded into the local image store (a build
    # with neither push nor an export would stay in the build cache); the DaemonSet runs it.
    img = run.mocks.one("docker-build:index:Image")
    assert img.inputs["push"] is False and "registries" not in img.inputs
    assert img.inputs["load"] is True
    assert img.inputs["platforms"] == [host_platform()]
    assert o["imageRef"] == f"qaic-device-plugin:{VERSION}" and o["imageBuilt"] is True
    pod = daemonset(run)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == o["imageRef"]
    # SKU mode off, default placement.
    assert plugin_env(run)["QAIC_SKU_BASED_RESOURCE_ENABLED"] == "false"
    assert plugin_env(run)["QAIC_LOG_LEVEL"] == "debug"
    assert pod["nodeSelector"] == {"qualcomm.com/qaic": "true"}
    assert o["resourceNames"] == ["qualcomm.com/qaic"]
    assert workload_requests(run) == {"qaic-pod-example": {"qualcomm.com/qaic": "1"}}
    assert [unversioned(w) for w in o["workloads"]] == ["Pod/qaic-workloads/qaic-pod-example"]
    # Nothing secret in dev.
    assert read_stack(STACKS["dev"])[1] == []


def test_stack_edge_pool() -> None:
    run = run_stack_file(STACKS["edge-pool"])
    o = run.outputs
    (prov,) = k8s_providers(run)
    assert prov["context"] == "edge-pool-admin" and "renderYamlToDirectory" not in prov
    assert_all_k8s_on_the_stack_provider(run)
    # Pinned image: nothing is built, the DaemonSet runs exactly the pinned digest.
    assert run.mocks.of_type("docker-build:index:Image") == []
    assert o["imageBuilt"] is False and "@sha256:" in o["imageRef"]
    ds = daemonset(run)
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == o["imageRef"]
    # kube-system: used, not created.
    assert ds["metadata"]["namespace"] == "kube-system" and o["namespace"] == "kube-system"
    assert [n["metadata"]["name"] for n in kubernetes_objects(run.mocks)
            if n["kind"] == "Namespace"] == ["qaic-workloads"]
    # One qualcomm.com/qaic pool.
    assert plugin_env(run)["QAIC_SKU_BASED_RESOURCE_ENABLED"] == "false"
    assert o["resourceNames"] == ["qualcomm.com/qaic"]
    tolerations = ds["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ai100",
            "effect": "NoSchedule"} in tolerations
    assert workload_requests(run) == {"qaic-inference": {"qualcomm.com/qaic": "1"}}
    dep = next(x for x in kubernetes_objects(run.mocks) if x["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsGroup"] == 995
    assert dep["spec"]["template"]["spec"]["tolerations"] == tolerations


def test_stack_ultra_prod() -> None:
    config, secrets = read_stack(STACKS["ultra-prod"])
    assert secrets == ["qaic-k8s:registryPassword"]
    run = run_program(config, secrets, "ultra-prod")
    o = run.outputs
    (prov,) = k8s_providers(run)
    assert prov["context"] == "ultra-prod-admin"
    assert_all_k8s_on_the_stack_provider(run)
    # Built, pushed with cache; the DaemonSet runs the pushed tag@digest.
    img = run.mocks.one("docker-build:index:Image")
    repo = "ghcr.io/example-org/qaic-device-plugin"
    assert img.inputs["push"] is True
    assert img.inputs["tags"] == [f"{repo}:{VERSION}", f"{repo}:{VERSION}-{SHA12}"]
    assert img.inputs["cacheTo"][0]["registry"]["ref"] == f"{repo}:buildcache"
    assert is_secret(img.inputs["registries"])
    password = fake_decrypt(yaml.safe_load(STACKS["ultra-prod"].read_text())
                            ["config"]["qaic-k8s:registryPassword"]["secure"])
    assert unsecret(img.inputs["registries"])[0]["password"] == password
    assert o["imageRef"] == f"{repo}:{VERSION}@{FAKE_DIGEST}"
    ds = daemonset(run)
    pod = ds["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == o["imageRef"]
    assert pod["imagePullSecrets"] == [{"name": "qaic-registry"}]
    assert is_secret(run.mocks.one("kubernetes:core/v1:Secret").inputs["stringData"])
    # SKU mode on: per-SKU names; samples ask for Ultra; the job takes a whole card.
    env = plugin_env(run)
    assert env["QAIC_SKU_BASED_RESOURCE_ENABLED"] == "true"
    assert env["QAIC_MULTI_SOC_POLICY"] == "require"
    assert env["QAIC_NFD_FEATURES_DIR"] == "/etc/kubernetes/node-feature-discovery/features.d"
    assert o["skuBasedResources"] is True
    assert o["resourceNames"] == ["qualcomm.com/qaic-std", "qualcomm.com/qaic-pro",
                                  "qualcomm.com/qaic-ultra"]
    assert workload_requests(run) == {
        "qaic-pod-example": {"qualcomm.com/qaic-ultra": "1"},
        "qaic-ultra-4soc": {"qualcomm.com/qaic-ultra": "4"},
    }
    assert [unversioned(w) for w in o["workloads"]] == ["Pod/qaic-workloads/qaic-pod-example",
                              "Job/qaic-workloads/qaic-ultra-4soc"]
    assert {"key": "qualcomm.com/ultra", "operator": "Equal", "value": "present",
            "effect": "NoExecute"} in pod["tolerations"]


def test_stack_e2e() -> None:
    """The stack `make e2e` applies to the single-node test cluster (issue 10)."""
    run = run_stack_file(STACKS["e2e"])
    o = run.outputs
    (prov,) = k8s_providers(run)
    assert "context" not in prov and "renderYamlToDirectory" not in prov  # $KUBECONFIG's
    assert run.mocks.of_type("docker-build:index:Image") == []
    assert o["imageRef"] == "localhost/qaic-device-plugin:e2e"
    ds = daemonset(run)
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == o["imageRef"] and c["imagePullPolicy"] == "Never"
    assert ds["metadata"]["namespace"] == "qaic-system" and pod["hostNetwork"] is True
    assert "nodeSelector" not in pod or pod["nodeSelector"] == {}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host["sys"] == "/run/qaic-e2e/node/sys"
    assert host["dev"] == "/run/qaic-e2e/node/dev"
    assert host["qaic-sdk"] == "/run/qaic-e2e/node/opt/qti-aic"
    assert "udev" not in host  # no udevd on the test machine
    env = plugin_env(run)
    assert env["QAIC_SKU_BASED_RESOURCE_ENABLED"] == "false"
    assert env["QAIC_UDEV_ENABLED"] == "false"
    assert [unversioned(w) for w in o["workloads"]] == ["Pod/qaic-workloads/qaic-pod-example",
                              "Deployment/qaic-workloads/qaic-inference",
                              "Job/qaic-workloads/qaic-ultra-4soc"]
    for obj in kubernetes_objects(run.mocks):
        if obj["kind"] in ("Pod", "Deployment", "Job"):
            spec = obj["spec"]
            podspec = spec["template"]["spec"] if "template" in spec else spec
            (wc,) = podspec["containers"]
            assert wc["image"] == "localhost/qaic-sample:e2e"
            assert wc["imagePullPolicy"] == "Never"
    assert read_stack(STACKS["e2e"])[1] == []  # nothing secret


def test_stack_dra_example() -> None:
    """DRA mode (issue 12 part 3): the DRA driver DaemonSet, its classes, RBAC and policy,
    and the samples claiming SoCs through ResourceClaimTemplates. Details: test_infra_dra."""
    run = run_stack_file(STACKS["dra-example"])
    o = run.outputs
    (prov,) = k8s_providers(run)
    assert prov["renderYamlToDirectory"] == str(ROOT / "out" / "manifests" / "dra-example")
    assert_all_k8s_on_the_stack_provider(run)
    assert run.mocks.of_type("docker-build:index:Image") == []
    assert o["allocationApi"] == "dra" and o["resourceNames"] == []
    assert o["daemonSetName"] == "qaic-dra-driver"
    assert o["deviceClasses"][0] == "qaic.qualcomm.com"
    assert "ultra.qaic.qualcomm.com" in o["deviceClasses"]
    env = {e["name"]: e.get("value") for e in daemonset(run)["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["QAIC_ALLOCATION_API"] == "dra" and "NODE_NAME" in env
    assert workload_requests(run) == {"qaic-pod-example": {}, "qaic-inference": {},
                                      "qaic-ultra-4soc": {}}  # no extended resources
    assert [unversioned(w) for w in o["workloads"]] == [
        "ResourceClaimTemplate/qaic-workloads/qaic-pod-example",
        "Pod/qaic-workloads/qaic-pod-example",
        "ResourceClaimTemplate/qaic-workloads/qaic-inference",
        "Deployment/qaic-workloads/qaic-inference",
        "ResourceClaimTemplate/qaic-workloads/qaic-ultra-4soc",
        "Job/qaic-workloads/qaic-ultra-4soc",
    ]
    kinds = {x["kind"] for x in kubernetes_objects(run.mocks)}
    assert {"DeviceClass", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding", "ResourceClaimTemplate"} <= kinds
    assert read_stack(STACKS["dra-example"])[1] == []  # nothing secret


def test_main_exports_outputs_and_turns_config_errors_into_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import infra.program as program

    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: exported.__setitem__(k, v))
    config, secrets = read_stack(STACKS["dev"])
    run_program(config, secrets, "dev")  # sets mocks + config for this process
    pulumi.runtime.set_all_config(config, secrets)
    program.main()
    assert set(exported) == {"imageRef", "imageTags", "imageBuilt", "namespace",
                             "daemonSetName", "allocationApi", "skuBasedResources",
                             "resourceNames", "deviceClasses", "workloads", "renderYamlDir"}
    pulumi.runtime.set_all_config({**config, "qaic-k8s:push": "true"}, secrets)
    logged: list[str] = []
    monkeypatch.setattr(pulumi.log, "error", lambda msg, *a, **k: logged.append(msg))
    with pytest.raises(SystemExit) as info:
        program.main()
    # 32: "already shown to the user", so the CLI adds no "unhandled error" line (tests/e2e)
    assert info.value.code == program.SHOWN_ERROR_EXIT == 32
    (line,) = logged
    assert line.startswith("stack 'dev': 'qaic-k8s:push' is 'true', which needs")


def test_config_errors_stop_before_any_resource_is_declared() -> None:
    config, _ = read_stack(STACKS["dev"])
    config["qaic-k8s:metricsPort"] = "-1"
    from infra.config import ConfigError

    with pytest.raises(ConfigError):
        run_program(config, [], "dev")
    monitor = pulumi.runtime.settings.get_monitor()
    assert monitor.get_registered_resources() == {}  # type: ignore[union-attr]


def test_entry_point_runs_as_the_language_host_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main: infra/` makes the host execute infra/__main__.py as a script."""
    import runpy

    from infra_harness import ROOT, RecordingMocks

    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: exported.__setitem__(k, v))
    config, secrets = read_stack(STACKS["dev"])
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="qaic-k8s", stack="dev", preview=False)
    pulumi.runtime.set_all_config(config, secrets)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def go() -> None:
        runpy.run_path(str(ROOT / "infra"), run_name="__main__")

    go()
    assert "daemonSetName" in exported
    assert mocks.one("kubernetes:apps/v1:DaemonSet").name == "qaic-device-plugin-daemonset"
