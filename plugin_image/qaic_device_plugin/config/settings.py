"""Typed settings: flag > environment > YAML file (QAIC_CONFIG_FILE) > default.

Every setting has one canonical name, the environment variable deployments already use; the
YAML file takes the same names, and each has a kebab-case flag (settings_load.py reads them).
Bad input becomes one line naming the setting, its value and what is accepted
(SettingsError), never a traceback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..kubelet.manager import socket_name
from ..qaic.model import Sku
from ..qaic.resources import resource_name
from ..qaic.topology import MultiSocPolicy
from ..qaic.udev import UdevSource
from .contracts import PCI_ADDRESS as _PCI_ADDRESS

CONFIG_FILE_ENV = "QAIC_CONFIG_FILE"
#: Resync ticks per full sysfs scan when QAIC_FULL_RESCAN_SECONDS is unset (5 min at 5 s): each
#: full scan of a 16-SoC node costs ~5 ms of CPU, a fingerprint tick ~0.3 ms (issue 11).
FULL_RESCAN_TICKS = 60
#: QAIC_RESYNC_SECONDS multiples between safety-net ticks while events do the work (30 s at 5 s):
#: the ticks were most of the idle CPU a node pays (issue 11), and with events they only catch
#: what was lost.
RESYNC_EVENTS_FACTOR = 6
UNIX_PATH_MAX = 107  # sun_path is 108 bytes, NUL included
_BOOL = "1/0/true/false/yes/no"


def _setting(env: str, default: Any, description: str, accepted: str, **constraints: Any) -> Any:
    return Field(
        default,
        validation_alias=AliasChoices(env, env.lower()),
        description=description,
        json_schema_extra={"env": env, "accepted": accepted},
        **constraints,
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False)

    sysfs_root: Path = _setting(
        "QAIC_SYSFS_ROOT", Path("/sys"), "where the host's sysfs is mounted", "a directory path"
    )
    dev_root: Path = _setting(
        "QAIC_DEV_ROOT",
        Path("/dev"),
        "where the host's /dev is mounted (read for health)",
        "a directory path",
    )
    device_plugin_dir: Path = _setting(
        "QAIC_DEVICE_PLUGIN_DIR",
        Path("/var/lib/kubelet/device-plugins"),
        "kubelet's device-plugin directory (kubelet.sock and our sockets)",
        "a directory path of at most 73 characters (Unix socket paths are limited)",
    )
    sku_based_resource_enabled: bool = _setting(
        "QAIC_SKU_BASED_RESOURCE_ENABLED",
        False,
        "one resource per SKU (qualcomm.com/qaic-std|pro|ultra) instead of qualcomm.com/qaic",
        _BOOL,
    )
    allowed_shares: int = _setting(
        "ALLOWED_QAIC_DEVICE_SHARES",
        1,
        "pods that may share one SoC (>1 turns card-topology preference off)",
        "an integer from 1 to 64",
        ge=1,
        le=64,
    )
    qaic_util_path: str | None = _setting(
        "QAIC_UTIL_PATH",
        None,
        "qaic-util binary (default: PATH, then /opt/qti-aic/tools/qaic-util); optional",
        "a file path",
    )
    qaic_util_timeout_seconds: float = _setting(
        "QAIC_UTIL_TIMEOUT_SECONDS",
        10.0,
        "how long one qaic-util run may take",
        "a number of seconds > 0",
        gt=0,
    )
    sku_overrides: dict[str, Sku] = _setting(
        "QAIC_SKU_OVERRIDES",
        {},
        'SKU per PCI address where qaic-util is absent, as JSON, e.g. {"0000:05:00.0": "pro"}',
        "a JSON object of PCI address (0000:05:00.0) to one of " + ", ".join(s.value for s in Sku),
    )
    resync_seconds: float = _setting(
        "QAIC_RESYNC_SECONDS",
        5.0,
        "periodic rescan of sysfs and the plugin dir, the safety net under inotify/udev events",
        "a number of seconds > 0",
        gt=0,
    )
    resync_events_seconds: float | None = _setting(
        "QAIC_RESYNC_EVENTS_SECONDS",
        None,
        "the same safety net while events cover what it looks for: the sysfs fingerprint"
        " while kernel uevents arrive (QAIC_UDEV_ENABLED with its monitor open: resets and"
        " re-probes announce themselves), the plugin-dir check while its inotify watch is"
        " in place; unset: 6 x QAIC_RESYNC_SECONDS",
        "a number of seconds > 0",
        gt=0,
    )
    full_rescan_seconds: float | None = _setting(
        "QAIC_FULL_RESCAN_SECONDS",
        None,
        "a full sysfs scan at least this often even when the cheap fingerprint taken every"
        " QAIC_RESYNC_SECONDS is unchanged (it cannot see every attribute; udev events and"
        " inotify trigger full scans at once); unset: 60 x QAIC_RESYNC_SECONDS",
        "a number of seconds > 0",
        gt=0,
    )
    health_poll_seconds: float = _setting(
        "QAIC_HEALTH_POLL_SECONDS",
        30.0,
        "how often qaic-util -q runs for Status and SKUs (and, while no usable qaic-util"
        " was found, how often it is looked for again); qaic-util is its only source, so"
        " without it health comes from sysfs via inotify/udev and the QAIC_RESYNC_SECONDS"
        " rescan",
        "a number of seconds > 0",
        gt=0,
    )
    health_poll_idle_seconds: float | None = _setting(
        "QAIC_HEALTH_POLL_IDLE_SECONDS",
        None,
        "how often qaic-util runs while its last answer had every SoC Ready (a reset, a"
        " udev event or a SoC appearing runs it at once, and QAIC_HEALTH_POLL_SECONDS applies"
        " again until all are Ready); unset: 4 x QAIC_HEALTH_POLL_SECONDS",
        "a number of seconds > 0",
        gt=0,
    )
    ue_cooldown_seconds: float = _setting(
        "QAIC_UE_COOLDOWN_SECONDS",
        300.0,
        "how long a SoC stays Unhealthy after an uncorrectable RAS error (ue_count grew)",
        "a number of seconds > 0",
        gt=0,
    )
    udev_enabled: bool = _setting(
        "QAIC_UDEV_ENABLED",
        True,
        "re-check health at once on udev events for qaic devices (resets, sub-system restarts)",
        _BOOL,
    )
    udev_source: UdevSource = _setting(
        "QAIC_UDEV_SOURCE",
        UdevSource.UDEV,
        "udev: events via udevd (needs the host's /run/udev mounted); kernel: raw kernel "
        "uevents (no udevd; needs the host network namespace)",
        "one of udev, kernel",
    )
    multi_soc_policy: MultiSocPolicy = _setting(
        "QAIC_MULTI_SOC_POLICY",
        MultiSocPolicy.PREFER,
        "multi-SoC sets spanning cards: prefer (allow, log, count) or require (refuse)",
        "one of prefer, require",
    )
    prestart_check: bool = _setting(
        "QAIC_PRESTART_CHECK",
        False,
        "PreStartContainer (always requested: it refuses a moved device node) also re-checks "
        "SoC health with a fresh qaic-util Status",
        _BOOL,
    )
    metrics_port: int = _setting(
        "QAIC_METRICS_PORT",
        9410,
        "port for /metrics, /healthz (liveness) and /readyz (readiness); 0 disables them; "
        "a port that cannot be bound is retried, devices keep being served",
        "an integer from 0 to 65535",
        ge=0,
        le=65535,
    )
    metrics_address: str = _setting(
        "QAIC_METRICS_ADDRESS",
        "",
        "address /metrics, /healthz and /readyz listen on, exactly (empty: all interfaces)",
        "an IP address, or empty for all",
    )
    nfd_features_dir: Path | None = _setting(
        "QAIC_NFD_FEATURES_DIR",
        None,
        "Node Feature Discovery local-source dir for a qaic feature file "
        "(usually /etc/kubernetes/node-feature-discovery/features.d); unset disables",
        "a directory path",
    )
    cdi_enabled: bool = _setting(
        "QAIC_CDI_ENABLED",
        False,
        "write a CDI spec for the SoCs and return cdi_devices in Allocate (besides DeviceSpecs)",
        _BOOL,
    )
    cdi_dir: Path = _setting(
        "QAIC_CDI_DIR", Path("/var/run/cdi"), "where the CDI spec is written", "a directory path"
    )
    pod_resources_socket: Path = _setting(
        "QAIC_POD_RESOURCES_SOCKET",
        Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        "kubelet's PodResources API socket: which SoCs running pods hold (optional; without "
        "it a SoC held under a former resource name or device ID looks free)",
        "a socket path",
    )
    state_file: Path | None = _setting(
        "QAIC_STATE_FILE",
        None,
        "where RAS cool-downs and learned SKUs are kept across plugin restarts "
        "(default: <QAIC_DEVICE_PLUGIN_DIR>/qaic/state.json)",
        "a file path",
    )
    allocation_api: Literal["devicePlugin", "dra"] = _setting(
        "QAIC_ALLOCATION_API",
        "devicePlugin",
        "devicePlugin: kubelet device-plugin API (default); dra: Dynamic Resource Allocation "
        "driver (settings in dra_settings.py: NODE_NAME, QAIC_DRA_*)",
        "one of devicePlugin, dra",
    )
    log_level: Literal["debug", "info", "warning", "error"] = _setting(
        "QAIC_LOG_LEVEL", "info", "log level", "one of debug, info, warning, error"
    )
    log_format: Literal["text", "json"] = _setting(
        "QAIC_LOG_FORMAT",
        "text",
        "log line format (json for log collectors)",
        "one of text, json",
    )

    @field_validator("log_level", "log_format", "multi_soc_policy", "udev_source", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("sku_overrides", mode="before")
    @classmethod
    def _lower_keys(cls, v: object) -> object:
        if isinstance(v, Mapping):
            return {str(k).lower(): (s.lower() if isinstance(s, str) else s) for k, s in v.items()}
        return v

    @field_validator("sku_overrides")
    @classmethod
    def _pci_keys(cls, v: dict[str, Sku]) -> dict[str, Sku]:
        bad = [k for k in v if not _PCI_ADDRESS.match(k)]
        if bad:  # a typo would otherwise silently override nothing
            raise ValueError(f"{bad[0]!r} is not a PCI address (domain:bus:device.function)")
        return v

    @field_validator("pod_resources_socket", "state_file", mode="before")
    @classmethod
    def _file_name(cls, v: object, info: ValidationInfo) -> object:
        """Empty QAIC_STATE_FILE means the default; a directory is never a file name."""
        if isinstance(v, str) and not v.strip() and info.field_name == "state_file":
            return None
        if isinstance(v, str) and (not v.strip() or v.rstrip().endswith("/")):
            raise ValueError("not a file name")
        return v

    @field_validator("device_plugin_dir")
    @classmethod
    def _room_for_sockets(cls, v: Path) -> Path:
        longest = max(len(socket_name(resource_name(sku))) for sku in Sku)
        limit = UNIX_PATH_MAX - 1 - longest
        if len(str(v)) > limit:  # gRPC cannot bind a longer Unix socket path
            raise ValueError(f"longer than {limit} characters")
        return v

    @field_validator("metrics_address")
    @classmethod
    def _ip_or_empty(cls, v: str) -> str:
        v = v.strip()
        if v:
            ipaddress.ip_address(v)  # ValueError names the value
        return v

    @property
    def full_rescan_period(self) -> float:
        return self.full_rescan_seconds or FULL_RESCAN_TICKS * self.resync_seconds

    @property
    def resync_events_period(self) -> float:
        return self.resync_events_seconds or RESYNC_EVENTS_FACTOR * self.resync_seconds

    @property
    def health_poll_idle_period(self) -> float:
        return self.health_poll_idle_seconds or 4 * self.health_poll_seconds


class SettingsError(Exception):
    """One line per bad setting, ready to print."""
