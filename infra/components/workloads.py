"""Workloads: the sample AI 100 workloads the stack turns on, in their own namespace.

Pods and Jobs cannot be changed in place (pod spec and job template are immutable), so a
change of their spec -- SKU mode, image, tolerations -- replaces them. Their names carry a
hash of the spec (``workloads.samples.versioned``): the replacement has a new name, so the
preview's dry-run create is accepted by a real API server (with a fixed name it is refused
as a pod update). The old one is deleted first and its deletion awaited (its SoCs are free
again), then the new one is created and awaited (the pod example Ready, the job Complete).
No ``pulumi.com/skipAwait``: it would also skip waiting for the old object's deletion, and
it is a Pulumi-only annotation that has no business in rendered GitOps manifests.

In DRA mode each sample also gets a ResourceClaimTemplate (created before it, named by its
spec's hash too, so a changed template is a new one): the one-SoC samples claim one device
of the all-SoCs class (of the ``workloadSku`` class when the stack sets that key), the 4-SoC
job a prioritized list: a whole Ultra card, else four SoCs of one card, else four Standard
SoCs (workloads/dra_claims.py). The monitoring DaemonSet (``workloadMonitor``, DRA mode only)
is declared by infra/components/monitor.py in a namespace of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.dra_classes import card_class_name
from infra.components.dra_objects import ALL_SOCS_CLASS, CARD_ATTRIBUTE, sku_class_name
from infra.components.monitor import declare_monitor
from infra.components.plugin_pod import stack_annotations
from infra.settings import StackSettings
from workloads.dra_claims import claim_template_spec, four_socs_spec
from workloads.samples import (
    DEPLOYMENT,
    POD_EXAMPLE,
    ULTRA_JOB,
    WorkloadParams,
    deployment_spec,
    labels_for,
    pod_example_spec,
    ultra_job_spec,
    versioned,
)

TYPE_TOKEN = "qaic-k8s:index:Workloads"


@dataclass(frozen=True)
class WorkloadsArgs:
    settings: StackSettings
    #: What serves the samples' SoCs (the plugin's or DRA driver's DaemonSet). Every sample
    #: depends on it directly: a dependency of this component alone does not order its
    #: children, and `pulumi destroy` could remove the DRA driver first, leaving the claims'
    #: CDI specs behind (the kubelet cannot unprepare a claim without its driver).
    served_by: tuple[pulumi.Resource, ...] = ()


class Workloads(pulumi.ComponentResource):
    """Creates the enabled samples; ``created`` lists them as ``Kind/namespace/name``."""

    created: list[str]

    def __init__(
        self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        s = args.settings
        self.created = []
        self.resources: list[pulumi.CustomResource] = []
        if s.workload_monitor:
            self.created += declare_monitor(self, name, s, args.served_by, self.resources)
        if not (s.workload_pod_example or s.workload_deployment or s.workload_ultra_job):
            self.register_outputs({"created": self.created})
            return

        ns = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": s.workload_namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "qaic-k8s-samples",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
                # another stack's preview refuses to put its samples here (cluster_pools.py)
                "annotations": stack_annotations(),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.resources.append(ns)
        opts = pulumi.ResourceOptions(parent=self, depends_on=[ns, *args.served_by])
        immutable = pulumi.ResourceOptions(
            parent=self, depends_on=[ns, *args.served_by], replace_on_changes=["spec"],
            delete_before_replace=True,
        )
        namespace = s.workload_namespace

        def params(resource: str, template: str) -> WorkloadParams:
            return WorkloadParams(
                resource_name=resource, image=s.workload_image, namespace=namespace,
                image_pull_policy=s.image_pull_policy, tolerations=s.toleration_list,
                claim_template=template if s.dra else None,
            )

        def claims(
            workload: str, spec: k8s.resource.v1.ResourceClaimTemplateSpecArgsDict,
        ) -> tuple[list[pulumi.Resource], str]:
            """DRA mode: the sample's ResourceClaimTemplate, which the sample depends on, and
            its name (spec-hashed: a changed template is a new object, made before the old
            one goes, and the sample that names it changes with it)."""
            if not s.dra:
                return [], workload
            template_name = versioned(workload, spec)
            template = k8s.resource.v1.ResourceClaimTemplate(
                f"{name}-{workload}-claims",
                metadata={"name": template_name, "namespace": namespace,
                          "labels": labels_for(workload)},
                spec=spec,
                opts=opts,
            )
            self.resources.append(template)
            self.created.append(f"ResourceClaimTemplate/{namespace}/{template_name}")
            return [template], template_name

        def after(deps: list[pulumi.Resource], base: pulumi.ResourceOptions) -> (
            pulumi.ResourceOptions
        ):
            return pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(depends_on=deps))

        chosen = s.workload_sku_chosen
        one_soc_class = sku_class_name(chosen) if chosen else ALL_SOCS_CLASS
        if s.workload_pod_example:
            deps, template = claims(POD_EXAMPLE, claim_template_spec(one_soc_class, 1))
            app, pod = pod_example_spec(params(s.workload_resource, template))
            pod_name = versioned(app, pod)
            self.resources.append(k8s.core.v1.Pod(
                f"{name}-pod-example",
                metadata={"name": pod_name, "namespace": namespace, "labels": labels_for(app)},
                spec=pod,
                opts=after(deps, immutable),
            ))
            self.created.append(f"Pod/{namespace}/{pod_name}")
        if s.workload_deployment:
            deps, template = claims(DEPLOYMENT, claim_template_spec(one_soc_class, 1))
            dep_name, dep = deployment_spec(params(s.workload_resource, template))
            self.resources.append(k8s.apps.v1.Deployment(
                f"{name}-deployment",
                metadata={"name": dep_name, "namespace": namespace, "labels": labels_for(dep_name)},
                spec=dep,
                opts=after(deps, opts),
            ))
            self.created.append(f"Deployment/{namespace}/{dep_name}")
        if s.workload_ultra_job:
            deps, template = claims(ULTRA_JOB, four_socs_spec(
                card_class_name("ultra"), ALL_SOCS_CLASS, sku_class_name("std"), CARD_ATTRIBUTE,
                shared=s.allowed_device_shares > 1))
            app, job = ultra_job_spec(params(s.ultra_job_resource, template))
            job_name = versioned(app, job)
            self.resources.append(k8s.batch.v1.Job(
                f"{name}-ultra-job",
                metadata={"name": job_name, "namespace": namespace, "labels": labels_for(app)},
                spec=job,
                opts=after(deps, immutable),
            ))
            self.created.append(f"Job/{namespace}/{job_name}")
        self.register_outputs({"created": self.created})
