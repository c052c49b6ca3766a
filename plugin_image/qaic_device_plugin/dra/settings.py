"""Settings of the DRA mode (QAIC_ALLOCATION_API=dra), from the environment only.

Kept apart from settings.py so device-plugin mode is untouched; the same rule holds: a bad
value is one line naming the variable, its value and what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config.settings import UNIX_PATH_MAX, SettingsError

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LONGEST_SOCKET = len("/qaic.qualcomm.com-reg.sock")


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
    plugins_dir: Path = _env(  # type: ignore[assignment]
        "QAIC_DRA_PLUGINS_DIR", Path("/var/lib/kubelet/plugins"), "a short directory path"
    )
    registry_dir: Path = _env(  # type: ignore[assignment]
        "QAIC_DRA_REGISTRY_DIR", Path("/var/lib/kubelet/plugins_registry"), "a short directory path"
    )
    kubeconfig: Path | None = _env(  # type: ignore[assignment]
        "QAIC_KUBECONFIG", None, "a kubeconfig file path; unset: the pod's service account"
    )
    slice_resync_seconds: float = _env(  # type: ignore[assignment]
        "QAIC_DRA_SLICE_RESYNC_SECONDS", 60.0, "a number of seconds > 0"
    )

    @field_validator("node_name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if len(v) > 253 or not _DNS_SUBDOMAIN.match(v):
            raise ValueError("not a DNS subdomain")
        return v

    @field_validator("plugins_dir", "registry_dir")
    @classmethod
    def _short(cls, v: Path) -> Path:
        if len(str(v)) + _LONGEST_SOCKET > UNIX_PATH_MAX - 1:
            raise ValueError("too long for a Unix socket path")
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
