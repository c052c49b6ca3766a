"""Before any resource is declared: which nodes this stack's DaemonSet would run on, and
whether another stack of the project already serves them.

A DaemonSet whose nodeSelector matches no node is created, reports 0 desired pods and looks
healthy; two stacks whose selectors match the same node run two plugins there, which offer
that node's SoCs twice (two device plugins registering the same resource name replace each
other at kubelet; a DRA driver beside a device plugin offers the free SoCs the plugin offers).
Neither shows at ``pulumi up``. So the preview asks the cluster, one list of Nodes and one of
the project's DaemonSets (by the labels every stack puts on them, plugin_pod.labels and
dra_driver.dra_labels), and says it in one line naming the key and its value:

- another stack's DaemonSet serves a node this stack's ``nodeSelector`` matches, or has the
  same selector: refused (``pulumi up`` stops before anything is created);
- another stack's DaemonSet is in this stack's ``namespace``: refused (the second stack would
  take over the first one's DaemonSet, which has the same name);
- this stack is in DRA mode and another stack already runs the DRA driver: refused. The
  driver's DeviceClasses, ClusterRole and binding, ResourceSlice policy and one-card policies
  are cluster-scoped objects with fixed names; a second stack would rewrite the first one's
  (the binding's subject, the policy's service account) and its destroy would delete them;
- this stack runs sample workloads and its ``workloadNamespace`` holds another stack's
  samples: refused (the samples have fixed names, and one stack's destroy would delete the
  namespace with the other's samples in it);
- the selector matches no node: a warning, and ``up`` goes on. A pool scaled to zero, or
  nodes that Node Feature Discovery has not labelled yet (the default selector is NFD's
  label), are normal states; the line says the DaemonSet runs nowhere until a node carries
  the labels.

Which stack a DaemonSet (or a samples namespace) belongs to is its annotation
:data:`STACK_ANNOTATION` (every stack sets it). A DaemonSet without it (deployed before the
annotation existed) counts as this stack's own when it is in this stack's namespace, and as
another stack's elsewhere.

Render mode never talks to a cluster, so nothing is checked; neither when no cluster can be
reached (the provider reports that itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx2
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Namespace, Node

from infra.cluster_apis import client_for
from infra.components.dra_objects import DRA_APP_NAME
from infra.components.plugin_pod import APP_NAME, STACK_ANNOTATION
from infra.settings import PROJECT, StackSettings
from qaic_device_plugin.dra.backend import DRIVER_NAME

#: The label every DaemonSet of the project carries (plugin_pod.labels, dra_labels).
PART_OF = ("app.kubernetes.io/part-of", "qaic-k8s")
#: At most this many node names in a line.
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Deployed:
    """A DaemonSet of the project found on the cluster."""

    namespace: str
    name: str
    stack: str | None  # STACK_ANNOTATION, None on DaemonSets from before it
    selector: Mapping[str, str]

    @property
    def dra(self) -> bool:
        return self.name == DRA_APP_NAME

    @property
    def where(self) -> str:
        owner = f"stack {self.stack!r}" if self.stack else "another stack"
        return f"{owner} (DaemonSet {self.namespace}/{self.name})"


@dataclass
class PoolReport:
    """Lines for the preview: errors stop the program, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A nodeSelector's rule: every entry present with that value (empty selects all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def _names(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:NAMES_SHOWN])
    return shown + (f" and {len(nodes) - NAMES_SHOWN} more" if len(nodes) > NAMES_SHOWN else "")


def deployed(client: Client) -> list[Deployed]:
    """The project's DaemonSets on the cluster (the device plugin's and the DRA driver's of
    every stack), without those being deleted."""
    out = []
    for ds in client.list(DaemonSet, namespace="*", labels={PART_OF[0]: PART_OF[1]}):
        meta = ds.metadata
        if meta is None or meta.deletionTimestamp or meta.name not in (APP_NAME, DRA_APP_NAME):
            continue
        pod = ds.spec.template.spec if ds.spec and ds.spec.template else None
        out.append(Deployed(str(meta.namespace), meta.name,
                            (meta.annotations or {}).get(STACK_ANNOTATION),
                            dict(pod.nodeSelector or {}) if pod else {}))
    return out


def _is_ours(d: Deployed, stack: str, settings: StackSettings) -> bool:
    return d.stack == stack or (d.stack is None and d.namespace == settings.namespace)


def samples_owner(client: Client, settings: StackSettings) -> str | None:
    """The stack whose samples are in this stack's ``workloadNamespace`` (None: no such
    namespace, or one without the annotation)."""
    if not settings.any_workload:
        return None
    try:
        ns = client.get(Namespace, settings.workload_namespace)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    return (ns.metadata.annotations or {}).get(STACK_ANNOTATION) if ns.metadata else None


def check(stack: str, settings: StackSettings, nodes: Mapping[str, Mapping[str, str]],
          found: list[Deployed], samples_of: str | None = None) -> PoolReport:
    """The lines for `stack`, given the cluster's nodes (name -> labels), the project's
    DaemonSets on it and the stack whose samples are in its ``workloadNamespace``."""
    report = PoolReport()
    if samples_of and samples_of != stack:
        report.errors.append(
            f"stack {stack!r}: '{PROJECT}:workloadNamespace' is "
            f"{settings.workload_namespace!r}, where stack {samples_of!r} already runs its "
            "samples; give each stack a workloadNamespace of its own (or the samples to one "
            "stack).")
    mine = settings.node_selector_map
    selector = json.dumps(list(settings.node_selector))
    key = f"stack {stack!r}: '{PROJECT}:nodeSelector' is {selector!r}"
    matched = sorted(n for n, labels in nodes.items() if selects(mine, labels))
    for other in found:
        if _is_ours(other, stack, settings):
            continue
        if other.namespace == settings.namespace:
            report.errors.append(
                f"stack {stack!r}: '{PROJECT}:namespace' is {settings.namespace!r}, where "
                f"{other.where} already runs; two stacks in one namespace would take over each "
                "other's objects: give each stack a namespace of its own.")
            continue
        shared = [n for n in matched if selects(other.selector, nodes[n])]
        if shared or dict(other.selector) == mine:
            on = f"nodes {_names(shared)}" if shared else "the same nodes"
            report.errors.append(
                f"{key}, which selects {on} that {other.where} already serves (its "
                f"nodeSelector {json.dumps(dict(other.selector))}); two plugins on a node "
                "offer its SoCs twice: choose labels that no other stack's nodeSelector matches.")
        elif settings.dra and other.dra:
            report.errors.append(
                f"stack {stack!r}: '{PROJECT}:allocationApi' is 'dra', but {other.where} "
                f"already runs the DRA driver {DRIVER_NAME} on this cluster; its DeviceClasses, "
                "ClusterRole, binding and admission policies are cluster-wide objects of one "
                "stack: deploy DRA mode from one stack per cluster.")
    if not matched:
        report.warnings.append(
            f"{key}, which matches none of the cluster's {len(nodes)} nodes; the DaemonSet "
            "runs nowhere until a node carries these labels (fine for a pool not scaled up "
            "yet).")
    return report


def check_pools(stack: str, settings: StackSettings, client: Client | None = None,
                ) -> PoolReport:
    """:func:`check` against the cluster the provider will use (nothing in render mode or
    without a reachable cluster)."""
    if settings.render_mode:
        return PoolReport()
    client = client or client_for(settings)
    if client is None:
        return PoolReport()
    try:
        nodes = {str(n.metadata.name): dict(n.metadata.labels or {})
                 for n in client.list(Node) if n.metadata is not None}
        found = deployed(client)
        samples_of = samples_owner(client, settings)
    except (httpx2.HTTPError, ApiError):
        return PoolReport()  # unreachable or refused: the provider reports it in its own words
    return check(stack, settings, nodes, found, samples_of)
