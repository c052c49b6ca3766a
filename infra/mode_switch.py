"""Before a stack leaves DRA mode: no claim our driver allocated on its nodes may be left.

Why: ``pulumi up`` with ``allocationApi: devicePlugin`` deletes the DRA driver's DaemonSet.
Kubelet must call that driver to unprepare a claim before the pod holding it can end; with
the driver gone, every pod still running on a claim of ours hangs in Terminating when it is
deleted, and a new driver is the only way out. Device-plugin mode also cannot see which SoCs
those pods hold (kubelet files them as claims, not under ``qualcomm.com/qaic``), so it would
hand them out again. So the preview refuses, in one line, while any ResourceClaim is
allocated by ``qaic.qualcomm.com`` on a node the stack's ``nodeSelector`` matches (another
stack's DRA nodes are not this stack's business), and says what to do: delete the pods and
claims, then run ``pulumi up`` again. An allocated claim is one a pod uses or is about to
use: the claim controller removes the allocation of a claim no pod reserves any more.

The stack's own samples are not in the way: the same update deletes them (and awaits their
deletion) before it deletes the driver (docs/provisioning.md, switching mode), so their
claims (owned by pods labelled ``app.kubernetes.io/part-of: qaic-k8s-samples`` in the
stack's workload or monitor namespace) are left out.

One list of claims (all namespaces), with a selector one list of Nodes, and when claims are
found one list of the sample pods: a preview on a cluster without resource.k8s.io v1 lists
nothing more.
"""

from __future__ import annotations

from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Node, Pod
from lightkube.resources.resource_v1 import ResourceClaim

from infra.settings import PROJECT, StackSettings
from qaic_device_plugin.dra.backend import DRIVER_NAME

#: Claims named in the line before "and N more".
SHOWN = 3
#: The label every sample pod of the stack carries (workloads/samples.py).
SAMPLES = {"app.kubernetes.io/part-of": "qaic-k8s-samples"}


def _sample_pods(client: Client, settings: StackSettings) -> set[tuple[str, str]]:
    namespaces = {settings.workload_namespace, settings.monitor_namespace}
    labels: dict[str, Any] = dict(SAMPLES)
    return {(p.metadata.namespace, p.metadata.name)
            for p in client.list(Pod, namespace="*", labels=labels)
            if p.metadata and p.metadata.namespace in namespaces and p.metadata.name}


def allocated_claims(client: Client, settings: StackSettings) -> list[str]:
    """`namespace/name` of each ResourceClaim with a device of our driver allocated on a node
    the stack's nodeSelector matches, but not a claim of the stack's samples, sorted."""
    nodes: set[str] | None = None
    if settings.node_selector_map:
        labels: dict[str, Any] = dict(settings.node_selector_map)
        nodes = {n.metadata.name for n in client.list(Node, labels=labels)
                 if n.metadata and n.metadata.name}
    try:
        claims = list(client.list(ResourceClaim, namespace="*"))
    except ApiError as e:
        if e.status.code == 404:  # no resource.k8s.io v1: no claims of ours either
            return []
        raise
    ours = []
    for c in claims:
        alloc = c.status.allocation if c.status else None
        results = (alloc.devices.results if alloc and alloc.devices else None) or []
        if any(r.driver == DRIVER_NAME and (nodes is None or r.pool in nodes) for r in results):
            ours.append(c)
    samples = _sample_pods(client, settings) if ours else set()
    out = []
    for c in ours:
        assert c.metadata is not None
        owners = {(c.metadata.namespace, o.name) for o in c.metadata.ownerReferences or ()
                  if o.kind == "Pod"}
        if not owners & samples:
            out.append(f"{c.metadata.namespace}/{c.metadata.name}")
    return sorted(out)


def claims_in_the_way(stack: str, settings: StackSettings, client: Client) -> str | None:
    """The one line refusing a device-plugin stack while claims of ours are allocated on its
    nodes, or None (DRA mode, or no such claim)."""
    if settings.dra:
        return None
    claims = allocated_claims(client, settings)
    if not claims:
        return None
    shown = ", ".join(claims[:SHOWN])
    more = f" and {len(claims) - SHOWN} more" if len(claims) > SHOWN else ""
    return (
        f"stack {stack!r}: '{PROJECT}:allocationApi' is '{settings.allocation_api}', but "
        f"{len(claims)} ResourceClaim(s) allocated by {DRIVER_NAME} on its nodes are in use "
        f"({shown}{more}); without the DRA driver kubelet cannot unprepare them and their "
        f"pods hang in Terminating. Delete those pods and claims (kubectl get resourceclaims "
        f"-A), then run pulumi up again."
    )
