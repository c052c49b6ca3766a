"""The plugin's own settings in the stack config (they become its container environment),
and the allocation API it runs with. :class:`infra.settings.StackSettings` extends this model
with where the manifests go, the image, placement and the samples.

Values the plugin validates itself (PCI addresses, SKU names) are checked with the plugin's
own definitions from ``qaic_device_plugin.config.contracts``, so the two can never disagree.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.config_parts import json_list
from qaic_device_plugin.config.contracts import SKU_NAMES, parse_sku_overrides

_SKUS_TEXT = ", ".join(SKU_NAMES)
_ABS_PATH = r"^/.*$"


class PluginSettings(BaseModel):
    """The plugin's settings. Field aliases are the config keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    allocation_api: Literal["devicePlugin", "dra"] = Field(
        default="devicePlugin",
        alias="allocationApi",
        description="devicePlugin (kubelet device-plugin API, extended resources) or dra "
        "(Dynamic Resource Allocation driver, resource.k8s.io/v1)",
    )
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
    udev_enabled: bool = Field(default=True, alias="udevEnabled", description="true or false")
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
        description=f'a JSON array of "<pci address>=<sku>" strings, sku one of {_SKUS_TEXT}',
    )
    host_sysfs_path: str = Field(
        default="/sys", alias="hostSysfsPath", pattern=_ABS_PATH,
        description="an absolute host path",
    )
    host_dev_path: str = Field(
        default="/dev", alias="hostDevPath", pattern=_ABS_PATH, description="an absolute host path"
    )
    host_sdk_path: str = Field(
        default="/opt/qti-aic",
        alias="hostSdkPath",
        pattern=_ABS_PATH,
        description="an absolute host path (the Platform SDK directory holding tools/qaic-util)",
    )

    @field_validator("sku_overrides", mode="before")
    @classmethod
    def _overrides_from_json(cls, value: Any) -> Any:
        value = json_list(value)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("not an array of strings")
        return tuple(value)

    @field_validator("sku_overrides")
    @classmethod
    def _check_overrides(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            address, eq, sku = item.partition("=")
            if not eq:
                raise ValueError(f"bad entry {item!r}")
            parse_sku_overrides({address: sku})  # the plugin's own rule
        return value

    @property
    def dra(self) -> bool:
        """DRA mode: the DaemonSet runs the DRA driver (QAIC_ALLOCATION_API=dra)."""
        return self.allocation_api == "dra"

    @property
    def sku_overrides_json(self) -> str:
        pairs = (item.partition("=") for item in self.sku_overrides)
        return json.dumps({address: sku for address, _, sku in pairs}, sort_keys=True)
