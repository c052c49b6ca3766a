"""The monitoring sample (``workloadMonitor``, DRA mode only): a DaemonSet whose pod on each node
sees every SoC of that node without taking one, where an exporter (qaic-util, the runtime's
telemetry) would run.

Its claim (workloads/dra_claims.py, ``monitor_claim_spec``) asks with ``adminAccess`` for
``allocationMode: All`` of the class ``monitor.qaic.qualcomm.com``: the one device per node
the driver publishes with QAIC_DRA_MONITOR_DEVICE (set with ``workloadMonitor``), ``all-socs``,
every SoC of the node in one CDI device. The scheduler neither counts an adminAccess
allocation as using the device nor refuses a device in use (KEP-5018), so the monitor blocks
nobody and is blocked by nobody; the device has no taint, and the driver prepares it for
unhealthy SoCs too (and refuses it to a claim without adminAccess).

Why not All over the SoC devices: the 1.37 allocator checks counters for adminAccess requests
too (kubernetes/kubernetes#140729, open), and a SoC of a proven Ultra card consumes its card's
counter (dra/cards.py), so such a claim could not be allocated while any of those SoCs is in
use: exactly when there is something to watch.

The API server allows ``adminAccess`` only in a namespace labelled
``resource.kubernetes.io/admin-access: "true"`` (it refuses the claim, or the template,
anywhere else), so the monitor gets a namespace of its own with that label: one the samples
do not share, since the label lets any claim there reach SoCs other pods hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from infra.components.dra_classes import driver_selector
from infra.settings import StackSettings
from qaic_device_plugin.dra.backend import DRIVER_NAME, TYPE_ALL
from workloads.dra_claims import monitor_claim_spec
from workloads.samples import MONITOR, WorkloadParams, labels_for, monitor_spec, versioned

#: The namespace label the API server requires for adminAccess (DRAAdminNamespaceLabelKey).
ADMIN_ACCESS_LABEL = "resource.kubernetes.io/admin-access"
#: The class of the driver's monitoring view (one device a node: every SoC).
MONITOR_CLASS = f"monitor.{DRIVER_NAME}"
#: Guarded: a device without `type` (an older driver's SoC) is not selected, not a CEL error.
MONITOR_SELECTOR = (f'has(device.attributes["{DRIVER_NAME}"].type) && '
                    f'device.attributes["{DRIVER_NAME}"].type == "{TYPE_ALL}"')


def declare_monitor(
    parent: pulumi.Resource,
    name: str,
    s: StackSettings,
    served_by: Sequence[pulumi.Resource],
    resources: list[pulumi.CustomResource],
) -> list[str]:
    """Declare the namespace, the claim template and the DaemonSet; return them as
    ``Kind/namespace/name`` (the stack's ``workloads`` output)."""
    namespace = s.monitor_namespace
    ns = k8s.core.v1.Namespace(
        f"{name}-monitor-namespace",
        metadata={"name": namespace, "labels": {
            "app.kubernetes.io/part-of": "qaic-k8s-samples",
            "pod-security.kubernetes.io/enforce": "restricted",
            ADMIN_ACCESS_LABEL: "true",
        }},
        opts=pulumi.ResourceOptions(parent=parent),
    )
    device_class = k8s.resource.v1.DeviceClass(
        f"{name}-monitor-class",
        metadata={"name": MONITOR_CLASS},
        spec={"selectors": [{"cel": {"expression": e}}
                            for e in (driver_selector(), MONITOR_SELECTOR)]},
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*served_by]),
    )
    opts = pulumi.ResourceOptions(parent=parent, depends_on=[ns, device_class, *served_by])
    spec = monitor_claim_spec(MONITOR_CLASS)
    template_name = versioned(MONITOR, spec)
    template = k8s.resource.v1.ResourceClaimTemplate(
        f"{name}-monitor-claims",
        metadata={"name": template_name, "namespace": namespace,
                  "labels": labels_for(MONITOR)},
        spec=spec,
        opts=opts,
    )
    params = WorkloadParams(
        resource_name="", image=s.workload_image, namespace=namespace,
        image_pull_policy=s.image_pull_policy, tolerations=s.toleration_list,
        claim_template=template_name,
    )
    app, daemonset = monitor_spec(params, s.node_selector_map)
    monitor = k8s.apps.v1.DaemonSet(
        f"{name}-monitor",
        metadata={"name": app, "namespace": namespace, "labels": labels_for(app)},
        spec=daemonset,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[template])),
    )
    resources += [ns, device_class, template, monitor]
    return [f"DeviceClass/{MONITOR_CLASS}", f"ResourceClaimTemplate/{namespace}/{template_name}",
            f"DaemonSet/{namespace}/{app}"]

