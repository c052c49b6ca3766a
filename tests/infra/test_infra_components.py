"""Each ComponentResource on its own, under mocks with preview=False."""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pytest
from infra_harness import (
    FAKE_DIGEST,
    RecordingMocks,
    b64,
    is_secret,
    manifest,
    registered_urns,
    run_components,
    unsecret,
)

from infra.components.device_plugin import DevicePlugin, DevicePluginArgs
from infra.components.image import PluginImage, PluginImageArgs
from infra.components.workloads import Workloads, WorkloadsArgs
from infra.config import load_settings
from infra.image_spec import load_image_spec, read_version
from infra.settings import StackSettings
from workloads.samples import unversioned

SHA = "0123456789abcdef0123456789abcdef01234567"


def cfg(**raw: Any) -> StackSettings:
    text = {k: ("true" if v is True else "false" if v is False else
                v if isinstance(v, str) else json.dumps(v)) for k, v in raw.items()}
    return load_settings("unit", text, {"registryPassword"})


@pytest.fixture
def output_registrations(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Capture register_outputs calls (the mock monitor otherwise drops them)."""
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor

    seen: dict[str, dict[str, Any]] = {}
    original = MockMonitor.RegisterResourceOutputs

    def record(self: MockMonitor, request: Any) -> Any:
        seen[request.urn] = rpc.deserialize_properties(request.outputs)
        return original(self, request)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(MockMonitor, "RegisterResourceOutputs", record)
    return seen


# --- PluginImage ---------------------------------------------------------------------------

def image_args(**kw: Any) -> PluginImageArgs:
    base: dict[str, Any] = {"spec": load_image_spec(), "version": read_version(), "sha": SHA}
    base.update(kw)
    return PluginImageArgs(**base)


def test_image_builds_every_platform_of_image_json_and_pushes_with_cache(
    output_registrations: dict[str, dict[str, Any]],
) -> None:
    spec = json.loads((load_image_spec.__defaults__[0]).read_text())  # type: ignore[index]
    version = read_version()

    def build() -> dict[str, Any]:
        img = PluginImage("img", image_args(
            registry="ghcr.io/acme", push=True, registry_username="bot",
            registry_password=pulumi.Output.secret("tok"),
        ))
        return {"ref": img.ref}

    mocks, out = run_components(build)
    rec = mocks.one("docker-build:index:Image")
    repo = f"ghcr.io/acme/{spec['name']}"
    assert rec.inputs["platforms"] == spec["platforms"] == ["linux/amd64", "linux/arm64"]
    assert rec.inputs["buildArgs"] == spec["build_args"]
    assert rec.inputs["dockerfile"]["location"].endswith(spec["dockerfile"])
    assert rec.inputs["tags"] == [f"{repo}:{version}", f"{repo}:{version}-{SHA[:12]}"]
    assert rec.inputs["push"] is True and rec.inputs["buildOnPreview"] is False
    assert is_secret(rec.inputs["registries"])
    assert unsecret(rec.inputs["registries"]) == [
        {"address": "ghcr.io", "username": "bot", "password": "tok"}
    ]
    assert rec.inputs["cacheFrom"] == [{"registry": {"ref": f"{repo}:buildcache"}}]
    assert rec.inputs["cacheTo"][0]["registry"]["mode"] == "max"
    assert rec.inputs["labels"]["org.opencontainers.image.revision"] == SHA
    assert out["ref"] == f"{repo}:{version}@{FAKE_DIGEST}"
    (urn,) = [u for u in output_registrations if u.endswith("PluginImage::img")]
    assert output_registrations[urn]["built"] is True
    assert any("PluginImage$docker-build:index:Image::img-build" in u for u in registered_urns())


def test_image_without_registry_is_built_but_not_pushed() -> None:
    mocks, out = run_components(lambda: {"ref": PluginImage("img", image_args()).ref})
    rec = mocks.one("docker-build:index:Image")
    assert rec.inputs["push"] is False
    assert "registries" not in rec.inputs and "cacheTo" not in rec.inputs
    assert out["ref"] == f"qaic-device-plugin:{read_version()}"


def test_image_tags_without_a_known_sha() -> None:
    mocks, _ = run_components(lambda: {"ref": PluginImage("img", image_args(sha=None)).ref})
    assert mocks.one("docker-build:index:Image").inputs["tags"] == [
        f"qaic-device-plugin:{read_version()}"
    ]


def test_pinned_image_skips_the_build() -> None:
    pinned = "reg.example/qaic:1@sha256:" + "cd" * 32
    mocks, out = run_components(
        lambda: {"ref": PluginImage("img", image_args(pinned_ref=pinned)).ref}
    )
    assert mocks.of_type("docker-build:index:Image") == []
    assert out["ref"] == pinned


# --- DevicePlugin --------------------------------------------------------------------------

def plugin(settings: StackSettings, image: str = "reg/qaic:1@sha256:x",
           password: str | None = None) -> tuple[RecordingMocks, dict[str, Any]]:
    def build() -> dict[str, Any]:
        dp = DevicePlugin("dp", DevicePluginArgs(
            settings=settings, image_ref=pulumi.Output.from_input(image),
            registry_password=password,
        ))
        return {"ns": dp.namespace, "ds": dp.daemonset_name, "names": dp.resource_names}

    return run_components(build)


def ds_pod(mocks: RecordingMocks) -> dict[str, Any]:
    spec: dict[str, Any] = manifest(mocks.one("kubernetes:apps/v1:DaemonSet"))["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    """Plain values; a downward-API value shows as ``<fieldPath>``."""
    out: dict[str, str] = {}
    for e in pod["containers"][0]["env"]:
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        out[e["name"]] = e.get("value", f"<{ref}>")
    return out


def test_daemonset_runs_exactly_the_image_with_hardened_settings(
    output_registrations: dict[str, dict[str, Any]],
) -> None:
    mocks, out = plugin(cfg())
    ds = manifest(mocks.one("kubernetes:apps/v1:DaemonSet"))
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "reg/qaic:1@sha256:x"
    assert ds["metadata"] == {
        "name": "qaic-device-plugin", "namespace": "qaic-system",
        "labels": ds["metadata"]["labels"],
        # which stack deploys it: another stack's preview tells it from its own
        "annotations": {"qualcomm.com/qaic-k8s-stack": "unit"},
    }
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}
    }
    assert c["securityContext"] == {
        "privileged": False, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "runAsUser": 0, "runAsGroup": 0,
        "runAsNonRoot": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["resources"] == {"requests": {"cpu": "20m", "memory": "50Mi"},
                              "limits": {"memory": "128Mi"}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9410, "protocol": "TCP"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"qualcomm.com/qaic": "true"}
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["serviceAccountName"] == "qaic-device-plugin"
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"] if "readOnly" in m}
    assert mounts == {"/var/lib/kubelet/device-plugins": False, "/host/sys": True,
                      "/host/dev": True, "/run/udev": True, "/opt/qti-aic": True,
                      "/var/lib/kubelet/pod-resources": True}
    assert "/dev" not in {m["mountPath"] for m in c["volumeMounts"]}
    host = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"/var/lib/kubelet/device-plugins": "DirectoryOrCreate", "/sys": "Directory",
                    "/dev": "Directory", "/run/udev": "DirectoryOrCreate",
                    "/opt/qti-aic": "DirectoryOrCreate",
                    "/var/lib/kubelet/pod-resources": "DirectoryOrCreate"}
    env = env_of(pod)
    assert env == {
        "QAIC_SKU_BASED_RESOURCE_ENABLED": "false", "ALLOWED_QAIC_DEVICE_SHARES": "1",
        "QAIC_LOG_LEVEL": "info", "QAIC_LOG_FORMAT": "text", "QAIC_METRICS_PORT": "9410",
        "QAIC_MULTI_SOC_POLICY": "prefer", "QAIC_HEALTH_POLL_SECONDS": "30",
        "QAIC_PRESTART_CHECK": "true", "QAIC_CDI_ENABLED": "false", "QAIC_UDEV_ENABLED": "true",
        "QAIC_UDEV_SOURCE": "udev", "QAIC_UE_COOLDOWN_SECONDS": "300",
        "QAIC_SYSFS_ROOT": "/host/sys", "QAIC_DEV_ROOT": "/host/dev",
        "QAIC_DEVICE_PLUGIN_DIR": "/var/lib/kubelet/device-plugins",
        "QAIC_METRICS_ADDRESS": "<status.hostIP>",
    }
    ns = manifest(mocks.one("kubernetes:core/v1:Namespace"))
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert out == {"ns": "qaic-system", "ds": "qaic-device-plugin",
                   "names": ["qualcomm.com/qaic"]}
    urns = registered_urns()
    for child in ("kubernetes:apps/v1:DaemonSet", "kubernetes:core/v1:ServiceAccount",
                  "kubernetes:core/v1:Namespace"):
        assert any(f"DevicePlugin${child}::" in u for u in urns), child
    (urn,) = [u for u in output_registrations if u.endswith("DevicePlugin::dp")]
    assert output_registrations[urn]["daemonSetName"] == "qaic-device-plugin"


def test_sku_mode_optional_mounts_and_overrides_reach_the_environment() -> None:
    mocks, out = plugin(cfg(
        skuBasedResources=True, skuOverrides=["0000:35:00.0=pro"], cdiEnabled=True,
        nfdFeaturesDir="/etc/kubernetes/node-feature-discovery/features.d",
        logFormat="json", allowedDeviceShares="2", cpuLimit="200m",
    ))
    pod = ds_pod(mocks)
    env = env_of(pod)
    assert env["QAIC_SKU_BASED_RESOURCE_ENABLED"] == "true"
    assert json.loads(env["QAIC_SKU_OVERRIDES"]) == {"0000:35:00.0": "pro"}
    assert env["QAIC_CDI_ENABLED"] == "true" and env["QAIC_CDI_DIR"] == "/var/run/cdi"
    assert env["QAIC_NFD_FEATURES_DIR"] == "/etc/kubernetes/node-feature-discovery/features.d"
    assert env["ALLOWED_QAIC_DEVICE_SHARES"] == "2" and env["QAIC_LOG_FORMAT"] == "json"
    rw = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
          if m.get("readOnly") is False}
    assert rw == {"/var/lib/kubelet/device-plugins", "/var/run/cdi",
                  "/etc/kubernetes/node-feature-discovery/features.d"}
    assert pod["containers"][0]["resources"]["limits"]["cpu"] == "200m"
    assert out["names"] == ["qualcomm.com/qaic-std", "qualcomm.com/qaic-pro",
                            "qualcomm.com/qaic-ultra"]


def test_metrics_port_zero_means_no_port_and_no_probe() -> None:
    mocks, _ = plugin(cfg(metricsPort="0", hostNetwork=False))
    pod = ds_pod(mocks)
    c = pod["containers"][0]
    assert "livenessProbe" not in c and "ports" not in c
    assert env_of(pod)["QAIC_METRICS_PORT"] == "0"
    assert pod["hostNetwork"] is False and pod["dnsPolicy"] == "ClusterFirst"
    assert env_of(pod)["QAIC_UDEV_ENABLED"] == "false"  # no netlink events outside the host netns


def test_kube_system_is_used_not_created() -> None:
    mocks, out = plugin(cfg(namespace="kube-system"))
    assert mocks.of_type("kubernetes:core/v1:Namespace") == []
    assert out["ns"] == "kube-system"
    assert manifest(mocks.one("kubernetes:apps/v1:DaemonSet"))["metadata"]["namespace"] == (
        "kube-system"
    )


def test_pull_secret_is_a_secret_dockerconfigjson() -> None:
    s = cfg(registry="ghcr.io/acme", registryUsername="bot", registryPassword="tok",
            createPullSecret=True)
    mocks, _ = plugin(s, password="tok")
    rec = mocks.one("kubernetes:core/v1:Secret")
    assert is_secret(rec.inputs["stringData"])
    sec = manifest(rec)
    assert sec["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(sec["stringData"][".dockerconfigjson"])["auths"]
    assert list(auths) == ["ghcr.io"] and auths["ghcr.io"]["username"] == "bot"
    assert auths["ghcr.io"]["auth"] == b64("bot:tok")
    assert ds_pod(mocks)["imagePullSecrets"] == [{"name": "qaic-registry"}]


# --- Workloads -----------------------------------------------------------------------------

def workloads(settings: StackSettings) -> tuple[RecordingMocks, dict[str, Any]]:
    return run_components(lambda: {"created": Workloads("w", WorkloadsArgs(settings)).created})


def requested(rec_inputs: dict[str, Any]) -> dict[str, str]:
    spec = rec_inputs["spec"]
    pod = spec.get("template", {}).get("spec", spec)
    return {k: v for k, v in pod["containers"][0]["resources"]["limits"].items()
            if k.startswith("qualcomm.com/")}


ALL_ON = {"workloadPodExample": True, "workloadDeployment": True, "workloadUltraJob": True,
          "workloadImage": "reg/sdk:1"}


def test_workloads_ask_for_the_pool_when_sku_mode_is_off() -> None:
    mocks, out = workloads(cfg(**ALL_ON))
    assert [unversioned(w) for w in out["created"]] == ["Pod/qaic-workloads/qaic-pod-example",
                              "Deployment/qaic-workloads/qaic-inference",
                              "Job/qaic-workloads/qaic-ultra-4soc"]
    assert requested(mocks.one("kubernetes:core/v1:Pod").inputs) == {"qualcomm.com/qaic": "1"}
    assert requested(mocks.one("kubernetes:apps/v1:Deployment").inputs) == {
        "qualcomm.com/qaic": "1"}
    assert requested(mocks.one("kubernetes:batch/v1:Job").inputs) == {"qualcomm.com/qaic": "4"}
    dep = manifest(mocks.one("kubernetes:apps/v1:Deployment"))
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsGroup"] == 995
    assert any("Workloads$kubernetes:batch/v1:Job::w-ultra-job" in u for u in registered_urns())


def test_immutable_samples_are_named_by_their_spec() -> None:
    """Issue 13 item 10: a changed Pod/Job spec gets a new name (a real API server accepts
    the preview's dry-run create of the replacement); the same spec keeps its name."""
    def names(**extra: Any) -> dict[str, str]:
        _, out = workloads(cfg(**ALL_ON, **extra))
        return {w.split("/")[0]: w.split("/")[2] for w in out["created"]}

    base, again, sku = names(), names(), names(skuBasedResources=True)
    assert base == again
    for kind in ("Pod", "Job"):
        assert re.fullmatch(r"qaic-(pod-example|ultra-4soc)-[0-9a-f]{8}", base[kind]), base
        assert sku[kind] != base[kind]
    assert base["Deployment"] == sku["Deployment"] == "qaic-inference"  # updated in place


def test_workloads_ask_for_the_sku_when_sku_mode_is_on() -> None:
    mocks, _ = workloads(cfg(skuBasedResources=True, workloadSku="pro", **ALL_ON))
    assert requested(mocks.one("kubernetes:core/v1:Pod").inputs) == {
        "qualcomm.com/qaic-pro": "1"}
    assert requested(mocks.one("kubernetes:batch/v1:Job").inputs) == {
        "qualcomm.com/qaic-ultra": "4"}


def test_no_workloads_means_no_namespace() -> None:
    mocks, out = workloads(cfg())
    assert [unversioned(w) for w in out["created"]] == [] and [r.typ for r in mocks.resources] == [
        "qaic-k8s:index:Workloads"]
