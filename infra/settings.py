"""Typed stack configuration, validated before any resource is declared.

The Pulumi CLI hands the program its config as a flat map of ``<namespace>:<key>`` to
strings (objects and arrays as JSON text; secure values decrypted, their keys listed as
secret). :func:`raw_config` reads that map exactly as the SDK does (explicitly set config
first, then the ``PULUMI_CONFIG`` environment bag), so keys in our namespace that the model
does not know are reported instead of silently ignored.

Every failure is a :class:`ConfigError` whose message is one line naming the stack, the key,
the bad value and what is accepted.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import pulumi
import pulumi.runtime.config as runtime_config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT = "qaic-k8s"

RESOURCE_DOMAIN = "qualcomm.com"
SKUS: tuple[str, ...] = ("std", "pro", "ultra")

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY = re.compile(
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ConfigError(Exception):
    """A stack configuration problem, reported as one line."""


class Toleration(BaseModel):
    """One toleration parsed from kubectl-taint syntax ``key[=value][:Effect]``."""

    model_config = ConfigDict(frozen=True)

    key: str
    value: str | None = None
    effect: str | None = None

    def as_k8s(self) -> dict[str, str]:
        out: dict[str, str] = {"key": self.key}
        if self.value is None:
            out["operator"] = "Exists"
        else:
            out["operator"] = "Equal"
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        return out


def _parse_toleration(text: str) -> Toleration:
    body, _, effect = text.partition(":")
    key, eq, value = body.partition("=")
    if not _LABEL_KEY.match(key):
        raise ValueError(f"bad taint key {key!r}")
    if eq and not _LABEL_VALUE.match(value):
        raise ValueError(f"bad taint value {value!r}")
    if effect and effect not in _EFFECTS:
        raise ValueError(f"bad taint effect {effect!r}")
    return Toleration(key=key, value=value if eq else None, effect=effect or None)


def _json_list(value: Any) -> Any:
    """Arrays arrive as JSON text from the CLI; accept real lists too (tests, defaults)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError("not JSON text") from exc
    return value


class StackSettings(BaseModel):
    """Everything a cluster stack can differ in. Field aliases are the config keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

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
        pattern=f"^{_DNS_LABEL}$",
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
    build_on_preview: bool = Field(
        default=False, alias="buildOnPreview", description="true or false"
    )
    create_pull_secret: bool = Field(
        default=False, alias="createPullSecret", description="true or false"
    )
    # --- the plugin's settings (environment variables) -----------------------------------
    sku_based_resources: bool = Field(
        default=False, alias="skuBasedResources", description="true or false"
    )
    allowed_device_shares: int = Field(
        default=1, alias="allowedDeviceShares", ge=1, le=64, description="an integer from 1 to 64"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="logLevel", description="debug, info, warning or error"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", alias="logFormat", description="text or json"
    )
    metrics_port: int = Field(
        default=9410,
        alias="metricsPort",
        ge=0,
        le=65535,
        description="an integer from 0 to 65535 (0 disables /metrics and /healthz)",
    )
    multi_soc_policy: Literal["prefer", "require"] = Field(
        default="prefer", alias="multiSocPolicy", description="prefer or require"
    )
    health_poll_seconds: int = Field(
        default=30,
        alias="healthPollSeconds",
        ge=1,
        le=3600,
        description="an integer from 1 to 3600",
    )
    ue_cooldown_seconds: int = Field(
        default=300,
        alias="ueCooldownSeconds",
        ge=1,
        le=86400,
        description="an integer from 1 to 86400",
    )
    udev_source: Literal["udev", "kernel"] = Field(
        default="udev", alias="udevSource", description="udev or kernel"
    )
    prestart_check: bool = Field(default=True, alias="prestartCheck", description="true or false")
    nfd_features_dir: str = Field(
        default="",
        alias="nfdFeaturesDir",
        pattern=r"^(/.*)?$",
        description="an absolute host path (empty = NFD feature files off)",
    )
    cdi_enabled: bool = Field(default=False, alias="cdiEnabled", description="true or false")
    cdi_dir: str = Field(
        default="/var/run/cdi",
        alias="cdiDir",
        pattern=r"^/.+$",
        description="an absolute host path",
    )
    sku_overrides: tuple[str, ...] = Field(
        default=(),
        alias="skuOverrides",
        description='a JSON array of "<pci address>=<std|pro|ultra>" strings',
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
        pattern=f"^{_DNS_LABEL}$",
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
    workload_sku: Literal["std", "pro", "ultra"] = Field(
        default="std", alias="workloadSku", description="std, pro or ultra"
    )
    workload_image: str = Field(
        default="", alias="workloadImage", description="an AI 100 runtime image reference"
    )
    workload_namespace: str = Field(
        default="qaic-workloads",
        alias="workloadNamespace",
        pattern=f"^{_DNS_LABEL}$",
        max_length=63,
        description="a DNS-1123 label",
    )
    # --- CI ------------------------------------------------------------------------------
    ci_deploy: bool = Field(default=False, alias="ciDeploy", description="true or false")

    @field_validator("sku_overrides", "node_selector", "tolerations", mode="before")
    @classmethod
    def _arrays_from_json(cls, value: Any) -> Any:
        value = _json_list(value)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("not an array of strings")
        return tuple(value)

    @field_validator("sku_overrides")
    @classmethod
    def _check_overrides(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            address, _, sku = item.partition("=")
            if not _PCI_ADDRESS.match(address) or sku not in SKUS:
                raise ValueError(f"bad entry {item!r}")
        return value

    @field_validator("node_selector")
    @classmethod
    def _check_selector(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, eq, label = item.partition("=")
            if not eq or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
                raise ValueError(f"bad entry {item!r}")
        return value

    @field_validator("tolerations")
    @classmethod
    def _check_tolerations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            _parse_toleration(item)
        return value

    @field_validator("cpu_request", "memory_request", "memory_limit")
    @classmethod
    def _check_quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError("not a quantity")
        return value

    @field_validator("cpu_limit")
    @classmethod
    def _check_optional_quantity(cls, value: str) -> str:
        if value and not _QUANTITY.match(value):
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
        """Extended resources the plugin offers (per SKU present on a node in SKU mode)."""
        if not self.sku_based_resources:
            return [f"{RESOURCE_DOMAIN}/qaic"]
        return [f"{RESOURCE_DOMAIN}/qaic-{sku}" for sku in SKUS]

    @property
    def workload_resource(self) -> str:
        """The resource the one-SoC sample workloads ask for."""
        if not self.sku_based_resources:
            return f"{RESOURCE_DOMAIN}/qaic"
        return f"{RESOURCE_DOMAIN}/qaic-{self.workload_sku}"

    @property
    def ultra_job_resource(self) -> str:
        """The 4-SoC job always wants the Ultra pool when SKU mode is on."""
        if not self.sku_based_resources:
            return f"{RESOURCE_DOMAIN}/qaic"
        return f"{RESOURCE_DOMAIN}/qaic-ultra"

    @property
    def node_selector_map(self) -> dict[str, str]:
        return {key: value for key, _, value in (i.partition("=") for i in self.node_selector)}

    @property
    def toleration_list(self) -> list[dict[str, str]]:
        return [_parse_toleration(t).as_k8s() for t in self.tolerations]

    @property
    def sku_overrides_json(self) -> str:
        pairs = (item.partition("=") for item in self.sku_overrides)
        return json.dumps({address: sku for address, _, sku in pairs}, sort_keys=True)

    @property
    def any_workload(self) -> bool:
        return self.workload_pod_example or self.workload_deployment or self.workload_ultra_job


FIELDS_BY_ALIAS: dict[str, str] = {
    (info.alias or name): name for name, info in StackSettings.model_fields.items()
}


def raw_config(project: str = PROJECT) -> dict[str, str]:
    """This program's config map (``key -> text``), as the CLI passed it."""
    merged: dict[str, Any] = {}
    merged.update(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{project}:"
    out: dict[str, str] = {}
    for full_key, value in merged.items():
        if full_key.startswith(prefix):
            out[full_key[len(prefix) :]] = value if isinstance(value, str) else json.dumps(value)
    return out


def secret_keys(project: str = PROJECT) -> set[str]:
    """Keys (without namespace) the CLI marked secret."""
    keys = set(runtime_config.get_config_secret_keys_env())
    keys |= {k for k in runtime_config.CONFIG.get() if runtime_config.is_config_secret(k)}
    prefix = f"{project}:"
    return {k[len(prefix) :] for k in keys if k.startswith(prefix)}


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _fail(stack: str, key: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(
        f"stack {stack!r}: config key '{PROJECT}:{key}' = {_shown(value)} is invalid; "
        f"expected {accepted}"
    )


def _combination(stack: str, key: str, value: object, problem: str) -> ConfigError:
    return ConfigError(f"stack {stack!r}: config key '{PROJECT}:{key}' = {_shown(value)} {problem}")


def load_settings(
    stack: str,
    raw: Mapping[str, str],
    secrets: set[str] | frozenset[str] = frozenset(),
) -> StackSettings:
    """Validate a raw config map; raise :class:`ConfigError` on the first problem."""
    for key in sorted(raw):
        if key not in FIELDS_BY_ALIAS:
            close = difflib.get_close_matches(key, list(FIELDS_BY_ALIAS), n=1)
            hint = (
                f"did you mean '{PROJECT}:{close[0]}'?"
                if close
                else ("one of the keys declared in Pulumi.yaml")
            )
            raise ConfigError(
                f"stack {stack!r}: config key '{PROJECT}:{key}' = {_shown(raw[key])} is "
                f"unknown; expected {hint}"
            )
    try:
        settings = StackSettings.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        alias = str(err["loc"][0]) if err["loc"] else "?"
        name = FIELDS_BY_ALIAS.get(alias, alias)
        info = StackSettings.model_fields.get(name)
        accepted = (info.description if info else None) or err["msg"]
        raise _fail(stack, alias, raw.get(alias, err.get("input")), accepted) from None

    s = settings
    if s.registry_password and "registryPassword" not in secrets:
        raise _combination(
            stack,
            "registryPassword",
            "<redacted>",
            "is plain text; set it with `pulumi config set --secret qaic-k8s:registryPassword`",
        )
    if s.push and not s.registry:
        raise _combination(stack, "push", "true", "needs qaic-k8s:registry (where to push)")
    if s.image_ref and (s.registry or s.push):
        key, val = ("push", "true") if s.push else ("registry", s.registry)
        raise _combination(
            stack, key, val, "conflicts with qaic-k8s:imageRef (a pinned image skips the build)"
        )
    if bool(s.registry_username) != bool(s.registry_password):
        key = "registryUsername" if s.registry_username else "registryPassword"
        value = s.registry_username or "<redacted>"
        other = "registryPassword" if s.registry_username else "registryUsername"
        raise _combination(stack, key, value, f"needs qaic-k8s:{other} as well")
    if s.registry_username and not s.registry:
        raise _combination(
            stack, "registryUsername", s.registry_username, "needs qaic-k8s:registry"
        )
    if s.create_pull_secret and not s.registry_username:
        raise _combination(
            stack,
            "createPullSecret",
            "true",
            "needs qaic-k8s:registryUsername and qaic-k8s:registryPassword",
        )
    if s.sku_overrides and not s.sku_based_resources:
        raise _combination(
            stack,
            "skuOverrides",
            list(s.sku_overrides),
            "has no effect unless qaic-k8s:skuBasedResources is true",
        )
    if s.workload_ultra_job and s.allowed_device_shares > 1:
        raise _combination(
            stack,
            "workloadUltraJob",
            "true",
            "needs qaic-k8s:allowedDeviceShares = 1 (shares turn topology-aware "
            "allocation off, so 4 SoCs of one Ultra card cannot be guaranteed)",
        )
    if s.any_workload and not s.workload_image:
        raise _combination(
            stack, "workloadImage", "", "must be set when a sample workload is enabled"
        )
    if s.render_mode and s.kube_context:
        raise _combination(
            stack,
            "kubeContext",
            s.kube_context,
            "conflicts with qaic-k8s:renderYamlDir (rendering never talks to a cluster)",
        )
    if s.cpu_limit and _to_millicores(s.cpu_limit) < _to_millicores(s.cpu_request):
        raise _combination(
            stack, "cpuLimit", s.cpu_limit, f"is below qaic-k8s:cpuRequest ({s.cpu_request})"
        )
    if _to_bytes(s.memory_limit) < _to_bytes(s.memory_request):
        raise _combination(
            stack,
            "memoryLimit",
            s.memory_limit,
            f"is below qaic-k8s:memoryRequest ({s.memory_request})",
        )
    return settings


_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _to_bytes(quantity: str) -> float:
    number, suffix = re.match(r"^([0-9.]+)(.*)$", quantity).groups()  # type: ignore[union-attr]
    if suffix == "m":
        return float(number) / 1000
    return float(number) * _SUFFIX[suffix]


def _to_millicores(quantity: str) -> float:
    return _to_bytes(quantity) * 1000


def settings_from_pulumi() -> StackSettings:
    """Read and validate the current stack's config (the CLI's or the test's)."""
    return load_settings(pulumi.get_stack(), raw_config(pulumi.get_project()), secret_keys())
