"""The figures of one phase, from the tracker's records of the jobs created in it.

- throughput: jobs bound per second from the phase's first creation to its last binding (the
  fill from empty is the burst that measures the scheduler; the bench's own creation rate is
  given next to it, so a bench that cannot create faster than the scheduler binds shows), and
  the drain rate: the jobs still unbound when the bench had created the last one, over the
  time to the last binding (the scheduler's pace with a queue in front of it);
- creation -> bound: the bench's clock, from just before the POST to the watch event that
  shows spec.nodeName (so it includes the API server's create, in DRA mode the controller
  manager making the claim, the scheduler, and one watch delivery);
- waits: jobs the scheduler marked unschedulable (PodScheduled=False) before binding them, and
  how long they took from creation to binding; jobs never bound are counted apart, with the
  time they had waited when the run ended;
- one card: of the multi-SoC jobs bound, how many have all SoCs on one card (DRA: from the
  allocation; device-plugin: the model in tracker.py); for 4-SoC jobs also among those that
  got their SoCs while some card in the cluster had four free (the target's condition), and
  how many were split although one had;
- 4-SoC waits while a card had room: in the bench's view when the scheduler's verdict arrived,
  which lags the scheduler's own by the watch (a departure seen meanwhile counts): an upper
  bound on the scheduler passing over a card that had room.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.common.stats import percentile

from .tracker import PodRec

Json = dict[str, Any]
DRAIN_MIN = 20  # fewer left unbound when creation ended: no drain rate (the bench set the pace)


def _dist(xs: list[float]) -> Json:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "mean": sum(xs) / len(xs), "max": max(xs)}


def _share(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def phase(pods: Iterable[PodRec], name: str, end: float, *, dra: bool) -> Json:
    recs = [r for r in pods if r.phase == name]
    if not recs:
        return {"jobs": 0}
    bound = [r for r in recs if r.bound is not None]
    never = [r for r in recs if r.bound is None]
    waited = [r for r in bound if r.unschedulable is not None]
    first = min(r.created for r in recs)
    last_created = max(r.created for r in recs)
    last_bound = max((r.bound for r in bound if r.bound is not None), default=first)
    drained = [r for r in bound if r.bound is not None and r.bound > last_created]
    out: Json = {
        "jobs": len(recs),
        "bound": len(bound),
        "throughput_pods_per_s": round(len(bound) / max(last_bound - first, 1e-9), 2),
        "created_pods_per_s": round(len(recs) / max(last_created - first, 1e-9), 2),
        # the backlog left when the bench had created them all, bound at the scheduler's pace
        "drain_pods": len(drained),
        "drain_pods_per_s": (round(len(drained) / max(last_bound - last_created, 1e-9), 2)
                             if len(drained) >= DRAIN_MIN else None),
        "create_to_bound_s": _dist([r.bound - r.created for r in bound if r.bound is not None]),
        "waited_pct": _share(len(waited) + sum(1 for r in never if r.unschedulable), len(recs)),
        "waited_create_to_bound_s": _dist(
            [r.bound - r.created for r in waited if r.bound is not None]),
        "never_bound": len(never),
        "never_bound_waited_s": _dist([end - r.created for r in never]),
    }
    for size in (1, 2, 4):  # the issue asks p50/p99 per job size: 4-SoC jobs wait longest
        out[f"create_to_bound_{size}soc_s"] = _dist(
            [r.bound - r.created for r in bound if r.size == size and r.bound is not None])
    for size in (2, 4):
        of = [r for r in bound if r.size == size and r.cards is not None]
        out[f"one_card_{size}soc_pct"] = _share(sum(1 for r in of if r.cards == 1), len(of))
        out[f"jobs_{size}soc_with_cards"] = len(of)
        w = [r for r in recs if r.size == size and r.unschedulable is not None]
        out[f"waited_{size}soc_pct"] = _share(len(w), sum(1 for r in recs if r.size == size))
    roomy = [r for r in bound if r.size == 4 and r.room_anywhere and r.cards is not None]
    out["one_card_4soc_when_a_card_had_room_pct"] = _share(
        sum(1 for r in roomy if r.cards == 1), len(roomy))
    out["split_4soc_while_a_card_had_room"] = sum(1 for r in roomy if r.cards != 1)
    four_waited = [r for r in recs if r.size == 4 and r.room_when_waiting is not None]
    out["waited_4soc_while_a_card_had_room"] = sum(1 for r in four_waited if r.room_when_waiting)
    if not dra:
        fours = [r for r in bound if r.size == 4 and r.room_on_node is not None]
        out["model_4soc_node_had_a_card_with_room_pct"] = _share(
            sum(1 for r in fours if r.room_on_node), len(fours))
    return out
