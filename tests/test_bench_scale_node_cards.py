"""The scale bench's node kinds (`--node-cards`, bench/scale/publishers.py): issue 22's node of
16 SoCs as four Ultra cards, or its mixed-SKU variant (3 Ultra + 2 Standard + 2 Pro cards), read
through the driver's own path, and the device-plugin model of where a 4-SoC job lands on it.
A mixed node has the same SoC count but only three cards that can hold a 4-SoC job: the bench
must see exactly that, or its one-card figures would be about the wrong node."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.common.errors import BenchError
from bench.scale.publishers import discover, node_cards
from bench.scale.report import headline
from bench.scale.tracker import PodRec, Tracker, placements


async def test_mixed_node_has_16_socs_on_seven_cards_of_which_three_hold_four() -> None:
    layout = await discover(node_cards("mixed"))
    assert layout.socs == 16
    socs_per_card = Counter(layout.card_of.values())
    assert sorted(socs_per_card.values()) == [1, 1, 1, 1, 4, 4, 4]
    skus = Counter(d.to_dict()["attributes"]["sku"]["string"] for d in layout.devices
                   if d.name in layout.card_of)
    assert skus == {"ultra": 12, "std": 2, "pro": 2}
    # whole-card devices (the ultra-card class) only for the Ultra cards: one counter set each
    wholes = [name for name, members in layout.members.items() if len(members) == 4]
    assert len(wholes) == len(layout.counter_sets) == 3


async def test_ultra_node_is_unchanged_four_ultra_cards() -> None:
    layout = await discover(node_cards("ultra"))
    assert sorted(Counter(layout.card_of.values()).values()) == [4, 4, 4, 4]
    assert len(layout.devices) == 60 and len(layout.counter_sets) == 4


def test_unknown_node_kind_names_the_value_and_the_choices() -> None:
    with pytest.raises(BenchError, match=r"'ultra-plus' is not one of ultra, mixed"):
        node_cards("ultra-plus")


async def test_device_plugin_model_puts_4soc_jobs_on_the_three_ultra_cards_then_splits() -> None:
    """Device-plugin mode on mixed nodes: the plugin's preferred allocation (the real
    qaic.topology code) gives each of the first three 4-SoC jobs an Ultra card of its own;
    the fourth finds no card with room and is split over the single-SoC cards."""
    layout = await discover(node_cards("mixed"))
    tracker = Tracker(placements([d.to_dict() for d in layout.devices]), dra=False)
    tracker.add_node("n1")
    assert tracker.cards_with_room == 3
    for i in range(4):
        name = f"job-{i}"
        tracker.pods[name] = PodRec(size=4, phase="p", created=0.0)
        tracker.on_pod("MODIFIED", {"metadata": {"name": name}, "spec": {"nodeName": "n1"}})
    cards = [tracker.pods[f"job-{i}"].cards for i in range(4)]
    assert cards == [1, 1, 1, 4]
    assert tracker.pods["job-3"].room_anywhere is False
    assert tracker.cards_with_room == 0


def _run(mode: str) -> dict[str, object]:
    return {"nodes": 20, "mode": mode, "client_qps": None,
            "phases": {"fill-0.85": {"throughput_pods_per_s": 10.0},
                       "churn-0.85": {"one_card_4soc_pct": 100.0}}}


@pytest.mark.parametrize(("plan", "line", "row"), [
    ({"node_cards": "mixed"}, "`--node-cards mixed`", "| 20, defaults, mixed cards |"),
    ({}, "four Ultra cards (`--node-cards ultra`)", "| 20, defaults |"),  # a JSON from before
])
def test_headline_tells_the_node_kinds_apart(plan: dict[str, str], line: str, row: str) -> None:
    out = headline({"meta": {"plan": plan}, "runs": [_run("device-plugin"), _run("dra")]})
    assert line in out.splitlines()[0]
    assert any(r.startswith(row) for r in out.splitlines())
