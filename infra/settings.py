"""Typed stack configuration: every key a stack file can set, with its default and what it
accepts. Loading and the cross-key checks are in :mod:`infra.config`; the plugin's own
settings (its container environment, ``allocationApi``) are in :mod:`infra.settings_plugin`.

Values the plugin validates itself (PCI addresses, SKU names) are checked with the plugin's
own definitions from ``qaic_device_plugin.config.contracts``, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from infra.config_parts import (
    DNS_LABEL,
    LABEL_KEY,
    LABEL_VALUE,
    QUANTITY,
    json_list,
    parse_toleration,
)
from infra.settings_plugin import PluginSettings
from qaic_device_plugin.config.contracts import RESOURCE_PREFIX, SKU_NAMES

PROJECT = "qaic-k8s"
#: The SKUs the stack's outputs and sample workloads name (the common AI 100 cards).
SAMPLE_SKUS: tuple[str, ...] = ("std", "pro", "ultra")
_SKUS_TEXT = ", ".join(SKU_NAMES)
#: What SKU mode's one-SoC samples ask for when `workloadSku` is empty.
DEFAULT_WORKLOAD_SKU = "std"


class StackSettings(PluginSettings):
    """Everything a cluster stack can differ in. Field aliases are the config keys."""

    # --- where the manifests go -----------------------------------------------------------
    render_yaml_dir: str = Field(
        default="",
        alias="renderYamlDir",
        description="a directory path (empty = apply to the cluster)",
    )
    kube_context: str = Field(
        default="", alias="kubeContext", description="a kubeconfig context name (empty = current)"
    )
    namespace: str = Field(
        default="qaic-system",
        alias="namespace",
        pattern=f"^{DNS_LABEL}$",
        max_length=63,
        description="a DNS-1123 label (kube-system is used as is, anything else is created)",
    )
    # --- the image ------------------------------------------------------------------------
    image_ref: str = Field(
        default="",
        alias="imageRef",
        description="an image reference such as host/repo:tag@sha256:... (empty = build)",
    )
    registry: str = Field(
        default="",
        alias="registry",
        pattern=r"^([a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?)?$",
        description="a registry repository prefix such as ghcr.io/acme (empty = none)",
    )
    registry_username: str = Field(
        default="", alias="registryUsername", description="a registry user name"
    )
    registry_password: str = Field(
        default="",
        alias="registryPassword",
        description="a registry password or token, set with `pulumi config set --secret`",
    )
    push: bool = Field(default=False, alias="push", description="true or false")
    load_image: bool = Field(default=False, alias="loadImage", description="true or false")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent",
        alias="imagePullPolicy",
        description="IfNotPresent, Always or Never",
    )
    build_on_preview: bool = Field(
        default=False, alias="buildOnPreview", description="true or false"
    )
    create_pull_secret: bool = Field(
        default=False, alias="createPullSecret", description="true or false"
    )
    # --- placement and footprint ---------------------------------------------------------
    host_network: bool = Field(default=True, alias="hostNetwork", description="true or false")
    node_selector: tuple[str, ...] = Field(
        default=("qualcomm.com/qaic=true",),
        alias="nodeSelector",
        description='a JSON array of "<label>=<value>" strings',
    )
    tolerations: tuple[str, ...] = Field(
        default=("qualcomm.com/qaic:NoSchedule",),
        alias="tolerations",
        description='a JSON array of "<key>[=<value>][:<Effect>]" strings',
    )
    priority_class_name: str = Field(
        default="system-node-critical",
        alias="priorityClassName",
        pattern=f"^{DNS_LABEL}$",
        description="a PriorityClass name",
    )
    cpu_request: str = Field(
        default="20m", alias="cpuRequest", description="a CPU quantity such as 20m"
    )
    cpu_limit: str = Field(
        default="", alias="cpuLimit", description="a CPU quantity or empty (no limit)"
    )
    memory_request: str = Field(
        default="50Mi", alias="memoryRequest", description="a memory quantity such as 50Mi"
    )
    memory_limit: str = Field(
        default="128Mi", alias="memoryLimit", description="a memory quantity such as 128Mi"
    )
    # --- sample workloads ----------------------------------------------------------------
    workload_pod_example: bool = Field(
        default=False, alias="workloadPodExample", description="true or false"
    )
    workload_deployment: bool = Field(
        default=False, alias="workloadDeployment", description="true or false"
    )
    workload_ultra_job: bool = Field(
        default=False, alias="workloadUltraJob", description="true or false"
    )
    workload_sku: str = Field(
        default="", alias="workloadSku", description=f"a SKU name ({_SKUS_TEXT}) or empty"
    )
    workload_image: str = Field(
        default="", alias="workloadImage", description="an AI 100 runtime image reference"
    )
    workload_namespace: str = Field(
        default="qaic-workloads",
        alias="workloadNamespace",
        pattern=f"^{DNS_LABEL}$",
        max_length=63,
        description="a DNS-1123 label",
    )
    workload_monitor: bool = Field(
        default=False, alias="workloadMonitor", description="true or false"
    )
    monitor_namespace: str = Field(
        default="qaic-monitoring",
        alias="monitorNamespace",
        pattern=f"^{DNS_LABEL}$",
        max_length=63,
        description="a DNS-1123 label",
    )
    # --- DRA mode: pods written for device-plugin mode -----------------------------------
    ultra_one_card: bool = Field(default=True, alias="ultraOneCard", description="true or false")
    ultra_one_card_namespaces: tuple[str, ...] = Field(
        default=(),
        alias="ultraOneCardNamespaces",
        description='a JSON array of "<label>=<value>" strings (namespace labels)',
    )
    # --- CI ------------------------------------------------------------------------------
    ci_deploy: bool = Field(default=False, alias="ciDeploy", description="true or false")

    @field_validator("node_selector", "tolerations", "ultra_one_card_namespaces", mode="before")
    @classmethod
    def _arrays_from_json(cls, value: Any) -> Any:
        value = json_list(value)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("not an array of strings")
        return tuple(value)

    @field_validator("workload_sku")
    @classmethod
    def _check_sku(cls, value: str) -> str:
        if value and value not in SKU_NAMES:
            raise ValueError(f"not a SKU: {value!r}")
        return value

    @field_validator("node_selector", "ultra_one_card_namespaces")
    @classmethod
    def _check_selector(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, eq, label = item.partition("=")
            if not eq or not LABEL_KEY.match(key) or not LABEL_VALUE.match(label):
                raise ValueError(f"bad entry {item!r}")
        return value

    @field_validator("tolerations")
    @classmethod
    def _check_tolerations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_toleration(item)
        return value

    @field_validator("cpu_request", "memory_request", "memory_limit")
    @classmethod
    def _check_quantity(cls, value: str) -> str:
        if not QUANTITY.match(value):
            raise ValueError("not a quantity")
        return value

    @field_validator("cpu_limit")
    @classmethod
    def _check_optional_quantity(cls, value: str) -> str:
        if value and not QUANTITY.match(value):
            raise ValueError("not a quantity")
        return value

    # --- derived values ------------------------------------------------------------------
    @property
    def render_mode(self) -> bool:
        return bool(self.render_yaml_dir)

    @property
    def builds_image(self) -> bool:
        return not self.image_ref

    @property
    def create_namespace(self) -> bool:
        return self.namespace != "kube-system"

    @property
    def resource_names(self) -> list[str]:
        """Extended resources the plugin offers (per SKU present on a node in SKU mode);
        none in DRA mode (SoCs are devices in ResourceSlices there)."""
        if self.dra:
            return []
        if not self.sku_based_resources:
            return [RESOURCE_PREFIX]
        return [f"{RESOURCE_PREFIX}-{sku}" for sku in SAMPLE_SKUS]

    @property
    def workload_resource(self) -> str:
        """The resource the one-SoC sample workloads ask for."""
        if not self.sku_based_resources:
            return RESOURCE_PREFIX
        return f"{RESOURCE_PREFIX}-{self.workload_sku or DEFAULT_WORKLOAD_SKU}"

    @property
    def workload_sku_chosen(self) -> str | None:
        """`workloadSku` when the stack sets it: DRA mode's one-SoC samples then claim that
        SKU's class; empty, any SoC (SKU mode's `std` would leave them Pending on a node
        without Standard cards, and DRA needs no SKU to name a resource)."""
        return self.workload_sku or None

    @property
    def ultra_job_resource(self) -> str:
        """The 4-SoC job always wants the Ultra pool when SKU mode is on."""
        if not self.sku_based_resources:
            return RESOURCE_PREFIX
        return f"{RESOURCE_PREFIX}-ultra"

    @property
    def one_card_rule(self) -> bool:
        """Pods asking for several `qaic-ultra` SoCs are rewritten to one card (DRA nodes
        serve `qaic-ultra` only in SKU mode, see infra/components/one_card.py)."""
        return self.dra and self.sku_based_resources and self.ultra_one_card

    @property
    def one_card_namespaces(self) -> dict[str, str]:
        return {k: v for k, _, v in (i.partition("=") for i in self.ultra_one_card_namespaces)}

    @property
    def node_selector_map(self) -> dict[str, str]:
        return {key: value for key, _, value in (i.partition("=") for i in self.node_selector)}

    @property
    def toleration_list(self) -> list[dict[str, str]]:
        return [parse_toleration(t).as_k8s() for t in self.tolerations]

    @property
    def any_workload(self) -> bool:
        return (self.workload_pod_example or self.workload_deployment
                or self.workload_ultra_job or self.workload_monitor)


FIELDS_BY_ALIAS: dict[str, str] = {
    (info.alias or name): name for name, info in StackSettings.model_fields.items()
}
