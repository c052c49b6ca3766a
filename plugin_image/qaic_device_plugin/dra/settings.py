"""Settings of the DRA mode (QAIC_ALLOCATION_API=dra), from the environment only.

Kept apart from settings.py so device-plugin mode is untouched; the same rule holds: a bad
value is one line naming the variable, its value and what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config.settings import SettingsError
from ..kubelet.dra.instances import POD_UID_MAX, SocketNames
from .backend import DRIVER_NAME

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_POD_UID = re.compile(rf"^[a-z0-9][-a-z0-9]{{0,{POD_UID_MAX - 1}}}$")


def _room(pod_uid: str) -> tuple[int, int]:
    """Characters the plugins and the registry directory may have: the shortest socket name
    this driver can use there, bound under its hidden name, must fit grpc's limit."""
    return SocketNames(DRIVER_NAME, Path("/"), Path("/"), pod_uid).room()


def _dir_accepted(which: int) -> str:
    return (
        f"a directory path of at most {_room('')[which]} characters, "
        f"{_room('u' * POD_UID_MAX)[which]} with QAIC_DRA_POD_UID set (the sockets in it "
        "must fit a Unix socket path)"
    )


def _env(name: str, default: object, accepted: str) -> object:
    return Field(
        default, validation_alias=AliasChoices(name), json_schema_extra={"accepted": accepted}
    )


class DraSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=True, validate_default=True
    )

    node_name: str = _env(  # type: ignore[assignment]
        "NODE_NAME", "", "the node's name (downward API spec.nodeName), a DNS subdomain"
    )
    pod_uid: str = _env(  # type: ignore[assignment]
        "QAIC_DRA_POD_UID", "",
        "unset, or the pod's UID (downward API metadata.uid): lowercase letters, digits and "
        f"'-', at most {POD_UID_MAX} characters",
    )
    plugins_dir: Path = _env(  # type: ignore[assignment]
        "QAIC_DRA_PLUGINS_DIR", Path("/var/lib/kubelet/plugins"), _dir_accepted(0)
    )
    registry_dir: Path = _env(  # type: ignore[assignment]
        "QAIC_DRA_REGISTRY_DIR", Path("/var/lib/kubelet/plugins_registry"), _dir_accepted(1)
    )
    kubeconfig: Path | None = _env(  # type: ignore[assignment]
        "QAIC_KUBECONFIG", None, "a kubeconfig file path; unset: the pod's service account"
    )
    slice_resync_seconds: float = _env(  # type: ignore[assignment]
        "QAIC_DRA_SLICE_RESYNC_SECONDS", 60.0, "a number of seconds > 0"
    )
    monitor_device: bool = _env(  # type: ignore[assignment]
        "QAIC_DRA_MONITOR_DEVICE", False,
        "true or false (publish the device all-socs: every SoC, for adminAccess claims)",
    )

    @field_validator("node_name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if len(v) > 253 or not _DNS_SUBDOMAIN.match(v):
            raise ValueError("not a DNS subdomain")
        return v

    @field_validator("pod_uid")
    @classmethod
    def _uid(cls, v: str) -> str:
        if v and not _POD_UID.match(v):
            raise ValueError("not a pod UID")
        return v

    @field_validator("plugins_dir", "registry_dir")
    @classmethod
    def _short(cls, v: Path, info: ValidationInfo) -> Path:
        """Checked against the name actually bound (hidden, and per pod with a UID): a longer
        path passed and then crashed grpc's bind with a traceback (issue 19)."""
        which = 0 if info.field_name == "plugins_dir" else 1
        if len(str(v)) > _room(str(info.data.get("pod_uid", "")))[which]:
            raise ValueError("too long for the sockets in it")
        return v

    @field_validator("kubeconfig")
    @classmethod
    def _file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():  # else a lightkube traceback, exit 1
            raise ValueError("not a file")
        return v

    @field_validator("slice_resync_seconds")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("not > 0")
        return v


def load_dra() -> DraSettings:
    try:
        return DraSettings()
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            for field, info in DraSettings.model_fields.items():
                env = str(info.validation_alias.choices[0])  # type: ignore[union-attr]
                if loc in (field, env):
                    extra = info.json_schema_extra
                    accepted = extra.get("accepted") if isinstance(extra, dict) else "?"
                    lines.append(f"invalid setting {env}={err['input']!r}: accepted: {accepted}")
        raise SettingsError("\n".join(lines)) from None
