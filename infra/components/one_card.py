"""The one-card rule for pods written for device-plugin mode (DRA mode with SKU mode on).

Device-plugin mode keeps ``qualcomm.com/qaic-ultra: 4`` on one card through its preferred
allocation. On a DRA node the same request becomes a claim for 4 devices of
``ultra.qaic.qualcomm.com`` with no constraint (KEP-5004 cannot carry one; KEP-6406's
capacity requests are alpha in 1.38 only), and the allocator's first fit spreads it over
cards whenever the first card is partly used. So a MutatingAdmissionPolicy
(admissionregistration.k8s.io/v1, GA in 1.36) rewrites such a request at CREATE, in both
``limits`` and ``requests`` of every container and init container:

==============================  =============================================
``qualcomm.com/qaic-ultra: 2``  ``qualcomm.com/qaic-ultra-2soc: 1``
``qualcomm.com/qaic-ultra: 3``  ``qualcomm.com/qaic-ultra-3soc: 1``
``qualcomm.com/qaic-ultra: 4k`` ``qualcomm.com/qaic-ultra-card: k`` (whole cards)
==============================  =============================================

Those names are DeviceClasses of one device each (dra_classes.py) whose devices are a card,
or 3 or 2 SoCs of one card (dra/cards.py), so no ResourceClaimTemplate is needed in any
namespace. The pod gets the annotation ``qaic.qualcomm.com/one-card`` saying what was
rewritten. A count that no card holds (5, 6, 7, 9, ...) is refused by a
ValidatingAdmissionPolicy that runs after the mutation, with a message saying so, instead of
being spread silently. One SoC (``qaic-ultra: 1``), other resources and pods with claims
are not matched at all (``matchConditions``).

Rewritten pods are served by DRA nodes only (no node's allocatable lists the new names). In a
cluster that also has device-plugin nodes, ``ultraOneCardNamespaces`` limits the rule to the
namespaces whose pods should run on DRA nodes, and a pod labelled
``qaic.qualcomm.com/one-card: "false"`` is never touched (it keeps ``qaic-ultra: N``, served
by device-plugin nodes, or on DRA nodes as N SoCs of any cards).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.dra_classes import card_resource_name
from qaic_device_plugin.config.contracts import RESOURCE_PREFIX
from qaic_device_plugin.dra.backend import DRIVER_NAME

MUTATING_NAME = "qaic-ultra-one-card"
VALIDATING_NAME = "qaic-ultra-one-card-counts"
ULTRA = f"{RESOURCE_PREFIX}-ultra"
SOCS_PER_CARD = 4
#: Annotation the rewrite leaves on the pod, and the pod label that opts out.
NOTE_ANNOTATION = f"{DRIVER_NAME}/one-card"
OPT_OUT_LABEL = f"{DRIVER_NAME}/one-card"


def _pointer(key: str) -> str:
    """A map key as a JSON-pointer segment (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def count_of(c: str) -> str:
    """CEL: how many ``qaic-ultra`` container ``c`` asks for (its limit; 0 without one).
    Quantities reach CEL as text; a non-integer is left to the API server's own check."""
    value = f"string({c}.resources.limits['{ULTRA}'])"
    return (f"(has({c}.resources) && has({c}.resources.limits) && "
            f"'{ULTRA}' in {c}.resources.limits && quantity({value}).isInteger() ? "
            f"quantity({value}).asInteger() : 0)")


#: Counts the rule rewrites: 2 or 3 SoCs of one card, or whole cards.
REWRITTEN = f"(n == 2 || n == 3 || (n >= {SOCS_PER_CARD} && n % {SOCS_PER_CARD} == 0))"
_TARGET = (f"(n == 2 ? '{card_resource_name('ultra', 2)}' : n == 3 ? "
           f"'{card_resource_name('ultra', 3)}' : '{card_resource_name('ultra')}')")
_TARGET_SEGMENT = (f"(n == 2 ? '{_pointer(card_resource_name('ultra', 2))}' : n == 3 ? "
                   f"'{_pointer(card_resource_name('ultra', 3))}' : "
                   f"'{_pointer(card_resource_name('ultra'))}')")
_VALUE = f"(n <= 3 ? '1' : string(n / {SOCS_PER_CARD}))"
#: Init containers, or an empty list (typed dyn, so both lists take the same expressions).
INIT = "(has(object.spec.initContainers) ? object.spec.initContainers : [])"
#: Cheap pre-filter (every pod CREATE pays it): some container asks for more than one.
MATCH = (f"object.spec.containers.exists(c, {count_of('c')} > 1) || "
         f"{INIT}.exists(c, {count_of('c')} > 1)")


def _patches(field: str, counts: str) -> str:
    """CEL: the JSON patches rewriting ``field`` (containers or initContainers)."""
    base = f"'/spec/{field}/' + string(i) + '/resources/"
    ops = []
    for part in ("limits", "requests"):
        remove = f"JSONPatch{{op: 'remove', path: {base}{part}/{_pointer(ULTRA)}'}}"
        add = (f"JSONPatch{{op: 'add', path: {base}{part}/' + "
               f"{_TARGET_SEGMENT}, value: {_VALUE}}}")
        present = (f"has(object.spec.{field}[i].resources.{part}) && "
                   f"'{ULTRA}' in object.spec.{field}[i].resources.{part}")
        ops.append(f"({present} ? [{remove}, {add}] : [])")
    return f"{counts}.transformList(i, n, {REWRITTEN}, {' + '.join(ops)}).flatten()"


def _notes(field: str, counts: str) -> str:
    return (f"{counts}.transformList(i, n, {REWRITTEN}, object.spec.{field}[i].name + ': "
            f"{ULTRA} ' + string(n) + ' -> ' + {_TARGET} + ' ' + {_VALUE})")


NOTES = f"({_notes('containers', 'variables.counts')} + " \
        f"{_notes('initContainers', 'variables.initCounts')}).join(', ')"
PATCH = f"{_patches('containers', 'variables.counts')} + " \
        f"{_patches('initContainers', 'variables.initCounts')}"
ANNOTATE = (f"variables.notes == '' ? Object{{}} : Object{{metadata: Object.metadata{{"
            f"annotations: {{'{NOTE_ANNOTATION}': variables.notes}}}}}}")
#: A count the rewrite does not take (5, 6, 7, 9...). Judged on the count itself, not on
#: whether the rewrite happened: the two bindings become active (and go) one after the
#: other, and a 4 that passes while the mutation is not in force yet must not be refused.
def _holdable(c: str) -> str:
    n = count_of(c)
    return f"({n} <= 3 || {n} % {SOCS_PER_CARD} == 0)"


VALID = (f"object.spec.containers.all(c, {_holdable('c')}) && "
         f"{INIT}.all(c, {_holdable('c')})")
MESSAGE = (
    f"{ULTRA} > 1 stays on one Ultra card (4 SoCs) on the DRA nodes of this cluster: ask for "
    f"1 to 4 SoCs or a multiple of 4 (whole cards), or claim SoCs of several cards with a "
    f"ResourceClaim of class ultra.{DRIVER_NAME}"
)
assert "'" not in MESSAGE  # it is quoted inside MESSAGE_EXPRESSION
MESSAGE_EXPRESSION = (
    f"'containers asking for {ULTRA} that no one card holds: ' + "
    f"(object.spec.containers + {INIT}).filter(c, !{_holdable('c')}).map(c, c.name + '="
    f"' + string({count_of('c')})).join(', ') + '. {MESSAGE}'"
)

_PODS_AT_CREATE: k8s.admissionregistration.v1.MatchResourcesArgsDict = {"resource_rules": [{
    "api_groups": [""], "api_versions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
}]}


def mutating_spec() -> k8s.admissionregistration.v1.MutatingAdmissionPolicySpecArgsDict:
    return {
        "failure_policy": "Fail",
        "reinvocation_policy": "Never",
        "match_constraints": _PODS_AT_CREATE,
        "match_conditions": [{"name": "asksForSeveralUltraSocs", "expression": MATCH}],
        "variables": [
            {"name": "counts", "expression": f"object.spec.containers.map(c, {count_of('c')})"},
            {"name": "initCounts", "expression": f"{INIT}.map(c, {count_of('c')})"},
            {"name": "notes", "expression": NOTES},
        ],
        # The note first: it reads the counts before the patch has removed them.
        "mutations": [
            {"patch_type": "ApplyConfiguration", "apply_configuration": {"expression": ANNOTATE}},
            {"patch_type": "JSONPatch", "json_patch": {"expression": PATCH}},
        ],
    }


def validating_spec() -> k8s.admissionregistration.v1.ValidatingAdmissionPolicySpecArgsDict:
    return {
        "failure_policy": "Fail",
        "match_constraints": _PODS_AT_CREATE,
        "match_conditions": [{"name": "asksForSeveralUltraSocs", "expression": MATCH}],
        "validations": [{"expression": VALID, "message_expression": MESSAGE_EXPRESSION,
                         "reason": "Invalid"}],
    }


def match_resources(namespaces: dict[str, str],
                    ) -> k8s.admissionregistration.v1.MatchResourcesArgsDict:
    """Pods in the chosen namespaces (all when none are named) without the opt-out label."""
    out: k8s.admissionregistration.v1.MatchResourcesArgsDict = {"object_selector": {
        "match_expressions": [{"key": OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}],
    }}
    if namespaces:
        out["namespace_selector"] = {"match_labels": dict(namespaces)}
    return out


@dataclass(frozen=True)
class OneCardRuleArgs:
    namespaces: dict[str, str]
    labels: dict[str, str]


class OneCardRule(pulumi.ComponentResource):
    """The MutatingAdmissionPolicy, the ValidatingAdmissionPolicy and their bindings."""

    def __init__(self, name: str, args: OneCardRuleArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qaic-k8s:index:OneCardRule", name, None, opts)
        def meta(name: str) -> k8s.meta.v1.ObjectMetaArgsDict:
            return {"name": name, "labels": args.labels}

        child = pulumi.ResourceOptions(parent=self)
        self.mutating = k8s.admissionregistration.v1.MutatingAdmissionPolicy(
            f"{name}-mutating", metadata=meta(MUTATING_NAME),
            spec=mutating_spec(), opts=child)
        self.validating = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-validating", metadata=meta(VALIDATING_NAME),
            spec=validating_spec(), opts=child)
        match = match_resources(args.namespaces)
        self.mutating_binding = k8s.admissionregistration.v1.MutatingAdmissionPolicyBinding(
            f"{name}-mutating-binding", metadata=meta(MUTATING_NAME),
            spec={"policy_name": MUTATING_NAME, "match_resources": match},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.mutating]))
        self.validating_binding = k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-validating-binding", metadata=meta(VALIDATING_NAME),
            spec={"policy_name": VALIDATING_NAME, "validation_actions": ["Deny"],
                  "match_resources": match},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.validating]))
        self.register_outputs({})
