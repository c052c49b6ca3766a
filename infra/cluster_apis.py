"""Before any resource is declared: does the cluster serve what the stack's settings ask for?

Without this, ``pulumi up`` would create the objects the cluster knows and then stop at the
first it does not (half applied), or the API server would silently drop a field of a feature
that is off (a DeviceClass's ``extendedResourceName``, a slice's counters) and the stack would
look fine while pods stay Pending. Each probe is one cheap request, the way the API server
itself answers: a list for a resource type (404: not served) and a server-side dry-run
create for a field (dropped: feature off). A failure is one :class:`ConfigError` line naming
the key, its value and the missing API.

Leaving DRA mode is checked here too (infra/mode_switch.py): a device-plugin stack is refused
while claims our driver allocated are in use on its nodes.

Render mode never talks to a cluster, so nothing is probed; neither when no cluster can be
reached (the provider then previews without one and reports that itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.core.exceptions import ConfigError as KubeConfigError
from lightkube.resources.admissionregistration_v1 import MutatingAdmissionPolicy
from lightkube.resources.resource_v1 import DeviceClass, ResourceSlice

from infra.config import ConfigError
from infra.mode_switch import claims_in_the_way
from infra.settings import PROJECT, StackSettings
from qaic_device_plugin.dra.backend import DRIVER_NAME

PROBE = "qaic-k8s-preflight"


@dataclass(frozen=True)
class Missing:
    key: str
    value: str
    api: str


def client_for(settings: StackSettings) -> Client | None:
    """A client for the cluster the provider will use ($KUBECONFIG's first file or
    ~/.kube/config, context ``kubeContext``), or None when there is no kubeconfig."""
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    path = Path(first).expanduser()
    if not path.is_file():
        return None
    try:
        config = KubeConfig.from_file(path).get(settings.kube_context or None)
    except KubeConfigError:
        return None
    return Client(config, timeout=httpx2.Timeout(10.0)) if config else None


def _served(client: Client, resource: Any) -> bool:
    try:
        next(iter(client.list(resource, chunk_size=1)), None)
    except ApiError as e:
        if e.status.code == 404:
            return False
        raise
    return True


def _kept(client: Client, obj: Any, field: Callable[[Any], Any]) -> bool:
    """Whether a dry-run create keeps `field` (a feature that is off drops it)."""
    return bool(field(client.create(obj, dry_run=True)))


def probe(client: Client, settings: StackSettings) -> list[Missing]:
    """What the settings need and the cluster does not serve (empty: all there)."""
    if not settings.dra:
        return []
    if not _served(client, DeviceClass):
        return [Missing("allocationApi", "dra", "resource.k8s.io/v1 DeviceClasses and "
                        "ResourceSlices (Dynamic Resource Allocation, Kubernetes 1.34+)")]
    out = []
    if settings.allowed_device_shares > 1:
        # Shared SoCs are devices with allowMultipleAllocations and consumable capacity; a
        # server without the feature drops both and would allocate each SoC to one claim.
        shares = str(settings.allowed_device_shares)
        probe_shared = ResourceSlice.from_dict({
            "metadata": {"generateName": f"{PROBE}-"},
            "spec": {"driver": DRIVER_NAME, "nodeName": PROBE,
                     "pool": {"name": PROBE, "generation": 0, "resourceSliceCount": 1},
                     "devices": [{"name": "soc", "allowMultipleAllocations": True,
                                  "capacity": {"shares": {"value": shares}}}]}})
        if not _kept(client, probe_shared,
                     lambda o: o.spec.devices and o.spec.devices[0].allowMultipleAllocations):
            out.append(Missing("allowedDeviceShares", shares, "ResourceSlice devices with "
                               "allowMultipleAllocations (feature DRAConsumableCapacity, "
                               "Kubernetes 1.36+)"))
    if not settings.one_card_rule:
        return out
    one_card = ("ultraOneCard", "true")
    if not _served(client, MutatingAdmissionPolicy):
        out.append(Missing(*one_card, "admissionregistration.k8s.io/v1 "
                           "MutatingAdmissionPolicies (Kubernetes 1.36+)"))
    probe_class = DeviceClass.from_dict({
        "metadata": {"generateName": f"{PROBE}-"},
        "spec": {"extendedResourceName": f"{PROBE}.example.com/probe"}})
    if not _kept(client, probe_class, lambda o: o.spec.extendedResourceName):
        out.append(Missing(*one_card, "DeviceClass extendedResourceName (feature "
                           "DRAExtendedResource, Kubernetes 1.36+)"))
    probe_slice = ResourceSlice.from_dict({
        "metadata": {"generateName": f"{PROBE}-"},
        "spec": {"driver": DRIVER_NAME, "nodeName": PROBE,
                 "pool": {"name": PROBE, "generation": 0, "resourceSliceCount": 1},
                 "sharedCounters": [{"name": "card", "counters": {"soc": {"value": "1"}}}]}})
    if not _kept(client, probe_slice, lambda o: o.spec.sharedCounters):
        out.append(Missing(*one_card, "ResourceSlice sharedCounters (feature "
                           "DRAPartitionableDevices, Kubernetes 1.36+)"))
    return out


def require_served(stack: str, settings: StackSettings, client: Client | None = None) -> None:
    """Raise ConfigError (one line) for the first thing the cluster does not serve."""
    if settings.render_mode:
        return
    client = client or client_for(settings)
    if client is None:
        return
    try:
        missing = probe(client, settings)
        in_the_way = claims_in_the_way(stack, settings, client)
    except (httpx2.HTTPError, ApiError):
        return  # unreachable or refused: the provider reports it in its own words
    if in_the_way:
        raise ConfigError(in_the_way)
    if missing:
        m = missing[0]
        raise ConfigError(
            f"stack {stack!r}: '{PROJECT}:{m.key}' is '{m.value}', which needs {m.api}; "
            f"the cluster does not serve it."
        )
