"""Small parsers behind the stack-config model: label keys, tolerations, quantities.

Constraints the plugin itself enforces (PCI addresses, SKU names) are not here: they come
from ``qaic_device_plugin.config.contracts``, so the stack and the plugin accept the same values.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY = re.compile(
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


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


def parse_toleration(text: str) -> Toleration:
    body, _, effect = text.partition(":")
    key, eq, value = body.partition("=")
    if not LABEL_KEY.match(key):
        raise ValueError(f"bad taint key {key!r}")
    if eq and not LABEL_VALUE.match(value):
        raise ValueError(f"bad taint value {value!r}")
    if effect and effect not in EFFECTS:
        raise ValueError(f"bad taint effect {effect!r}")
    return Toleration(key=key, value=value if eq else None, effect=effect or None)


def json_list(value: Any) -> Any:
    """Arrays arrive as JSON text from the CLI; accept real lists too (tests, defaults)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError("not JSON text") from exc
    return value


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


def quantity_value(quantity: str) -> float:
    """A Kubernetes quantity as a number (``500m`` -> 0.5, ``1Mi`` -> 1048576)."""
    match = re.match(r"^([0-9.]+)(.*)$", quantity)
    if match is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    number, suffix = match.groups()
    if suffix == "m":
        return float(number) / 1000
    return float(number) * _SUFFIX[suffix]
