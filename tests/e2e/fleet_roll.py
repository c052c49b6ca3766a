"""How a DaemonSet's rolling update went, node by node, from a pod watch stamped on arrival
(cluster/watch.py): when each node's old pod went, when its new pod was created and when it
turned Ready. The device plugin replaces (maxUnavailable 1: old pod first, the node offers
nothing until the new one registered); the DRA driver surges (maxSurge 1: the new pod
registers beside the old one, which goes once the new one is Ready)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from cluster.watch import Event, Watch, is_ready

Obj = dict[str, Any]


@dataclass(frozen=True)
class NodeRoll:
    node: str
    old_gone: float  # the old pod seen going (deletionTimestamp set, or deleted)
    new_added: float  # the new pod seen created
    new_ready: float  # the new pod seen Ready (registered with kubelet: the plugin's readiness)
    new_pod: Obj

    @property
    def started(self) -> float:
        return min(self.old_gone, self.new_added)

    @property
    def surged(self) -> bool:
        """The old pod served until the new one was Ready."""
        return self.new_ready <= self.old_gone

    @property
    def readvertise_seconds(self) -> float:
        """From the node's turn in the roll to its new pod Ready (its SoCs offered by it)."""
        return self.new_ready - self.started

    @property
    def gap_seconds(self) -> float:
        """How long the node had no Ready pod of the DaemonSet."""
        return max(0.0, self.new_ready - self.old_gone)


def node_rolls(watch: Watch, old: dict[str, str], timeout: float = 600) -> dict[str, NodeRoll]:
    """Each node's roll (`old`: node -> its old pod's uid), waiting for what has not arrived."""
    def going(uid: str) -> Event:
        return watch.first(f"pod {uid} going", lambda e: e.obj["metadata"]["uid"] == uid and (
            e.type == "DELETED" or bool(e.obj["metadata"].get("deletionTimestamp"))), timeout)

    def new_on(node: str, uid: str) -> Event:
        return watch.first(f"a new pod on {node}", lambda e: e.type != "DELETED" and e.obj[
            "spec"].get("nodeName") == node and e.obj["metadata"]["uid"] != uid, timeout)

    out = {}
    for node, uid in old.items():
        added = new_on(node, uid)
        new_uid = added.obj["metadata"]["uid"]
        ready = watch.first(f"{node}'s new pod Ready", lambda e, u=new_uid: (
            e.obj["metadata"]["uid"] == u and e.type != "DELETED" and is_ready(e.obj)), timeout)
        out[node] = NodeRoll(node, going(uid).at, added.at, ready.at, ready.obj)
    return out


def one_node_at_a_time(rolls: dict[str, NodeRoll]) -> bool:
    """No two nodes were in their turn of the roll at the same time."""
    spans = sorted((r.started, max(r.new_ready, r.old_gone)) for r in rolls.values())
    return all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def report(rolls: dict[str, NodeRoll], mode: str, record_property: Any) -> None:
    for node, r in sorted(rolls.items()):
        record_property(f"{mode}_readvertise_{node}_s", round(r.readvertise_seconds, 2))
        record_property(f"{mode}_gap_{node}_s", round(r.gap_seconds, 2))
        print(f"{mode} roll: {node} new pod Ready {r.readvertise_seconds:.2f} s into its turn,"
              f" {r.gap_seconds:.2f} s without a Ready pod")
