"""Whole cards and parts of a card as DRA devices (dra/cards.py) and their shared counters in
ResourceSlices (kubelet/dra/counters.py): pure logic on a fake node scanned as the driver
scans a real one. What the API server and scheduler make of them is shown by
tests/e2e/test_cluster_dra.py (the whole-card block)."""

from __future__ import annotations

import subprocess
from itertools import combinations
from pathlib import Path
from typing import Any

from qaic_device_plugin.dra import cards
from qaic_device_plugin.dra.backend import to_device
from qaic_device_plugin.kubelet.dra import counters
from qaic_device_plugin.qaic.inventory import Inventory, SocState
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import parse_qaic_util
from qaic_device_plugin.sim.node import CardSpec, FakeNode

ULTRA2_STD_PRO = [CardSpec(Sku.ULTRA), CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD),
                  CardSpec(Sku.PRO)]


def scan(tmp_path: Path, specs: list[CardSpec], *, qaic_util: bool = True,
         overrides: dict[str, Sku] | None = None) -> list[SocState]:
    node = FakeNode(tmp_path / "node", specs)
    node.write()
    entries = None
    if qaic_util:
        out = subprocess.run([str(node.qaic_util_path), "-q"], capture_output=True, text=True,
                             check=True).stdout
        entries = parse_qaic_util(out)
    inv = Inventory(node.sysfs_root, node.dev_root, overrides or {})
    return list(inv.scan(entries).socs)


def pairs(states: list[SocState]) -> list[tuple[SocState, Any]]:
    return [(s, to_device(s)) for s in states]


def attr(device: Any, name: str) -> Any:
    return next(iter(device.attributes[name].values()))


def test_each_proven_ultra_card_is_a_card_and_its_parts(tmp_path: Path) -> None:
    states = scan(tmp_path, ULTRA2_STD_PRO)
    out = cards.partition(pairs(states))
    ultra_cards = sorted({s.soc.card_id for s in states if s.sku.sku is Sku.ULTRA})
    assert len(ultra_cards) == 2
    groups = {d.name: d for d in out.devices if attr(d, "type") != cards.TYPE_SOC}
    # per card: the whole card, 6 pairs and 4 trios; nothing for the Standard and Pro cards
    assert len(groups) == 2 * (1 + 6 + 4)
    for card_id in ultra_cards:
        socs = sorted((s for s in states if s.soc.card_id == card_id),
                      key=lambda s: s.soc.pci_address)
        whole = groups[cards.card_device_name(card_id)]
        assert attr(whole, "type") == "card" and attr(whole, "socCount") == 4
        assert attr(whole, "sku") == "ultra" and attr(whole, "cardID") == card_id
        assert attr(whole, "qids") == ",".join(str(s.soc.qid) for s in socs)
        assert out.members[whole.name] == tuple(socs)
        for idx in combinations(range(4), 2):
            part = groups[cards.part_device_name(card_id, idx)]
            assert attr(part, "socCount") == 2
            assert out.members[part.name] == tuple(socs[i] for i in idx)
    # SoC devices are all still there, typed, with their own names
    soc_devices = [d for d in out.devices if attr(d, "type") == cards.TYPE_SOC]
    assert [d.name for d in soc_devices] == [to_device(s).name for s in states]


def test_counters_keep_a_card_and_its_socs_apart(tmp_path: Path) -> None:
    """One counter per SoC: the card uses all four, a part its own, a SoC its one; so any two
    devices that share a SoC share a counter, and devices of different SoCs share none."""
    states = scan(tmp_path, ULTRA2_STD_PRO)
    out = cards.partition(pairs(states))
    sets = {c["name"]: c["counters"] for c in out.counter_sets}
    assert len(sets) == 2 and all(len(c) == 4 for c in sets.values())

    def used(d: Any) -> set[tuple[str, str]]:
        return {(c.counterSet, n) for c in d.consumesCounters or () for n in c.counters}

    def socs_of(d: Any) -> set[str]:
        return {s.soc.pci_address for s in out.members[d.name]} if d.name in out.members \
            else {attr(d, "resource.kubernetes.io/pciBusID")}

    by_card = [d for d in out.devices if d.consumesCounters]
    assert len(by_card) == 2 * (4 + 11)  # Standard and Pro SoCs consume nothing
    for a, b in combinations(by_card, 2):
        assert bool(used(a) & used(b)) == bool(socs_of(a) & socs_of(b)), (a.name, b.name)
    for d in by_card:  # every counter a device names exists, with room for it
        for c in d.consumesCounters:
            assert set(c.counters) <= set(sets[c.counterSet])


def test_unproven_or_incomplete_cards_are_not_offered_whole(tmp_path: Path) -> None:
    """Operator situation: no qaic-util on the node, so four SoCs behind one switch may be
    four single-SoC cards; a card whose SoC was hot-removed has no whole to offer."""
    states = scan(tmp_path / "a", [CardSpec(Sku.ULTRA)], qaic_util=False)
    out = cards.partition(pairs(states))
    assert out.counter_sets == [] and out.members == {}
    assert all(not d.consumesCounters for d in out.devices) and len(out.devices) == 4
    # the operator's override proves the card as well as qaic-util does
    pcis = [s.soc.pci_address for s in states]
    proven = scan(tmp_path / "b", [CardSpec(Sku.ULTRA)], qaic_util=False,
                  overrides={p: Sku.ULTRA for p in pcis})
    assert len(cards.partition(pairs(proven)).members) == 11
    three = scan(tmp_path / "c", [CardSpec(Sku.ULTRA)])[:3]
    assert cards.partition(pairs(three)).members == {}


def test_a_card_with_an_unhealthy_soc_carries_its_taint(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "node", [CardSpec(Sku.ULTRA)])
    node.write()
    out = subprocess.run([str(node.qaic_util_path), "-q"], capture_output=True, text=True,
                         check=True).stdout
    first = sorted(s.pci_address for s in node.socs)[0]
    node.remove_device_node(first)
    states = list(Inventory(node.sysfs_root, node.dev_root, {}).scan(
        parse_qaic_util(out)).socs)
    part = cards.partition(pairs(states))
    tainted = {d.name for d in part.devices if d.taints}
    card_id = states[0].soc.card_id
    assert cards.card_device_name(card_id) in tainted
    assert cards.part_device_name(card_id, (0, 1)) in tainted
    assert cards.part_device_name(card_id, (1, 2)) not in tainted
    reports = {r.device: r for r in cards.group_health_reports("node-a", part.members)}
    assert not reports[cards.card_device_name(card_id)].healthy
    assert first in reports[cards.card_device_name(card_id)].message
    assert reports[cards.part_device_name(card_id, (2, 3))].healthy


def test_device_and_counter_names_are_dns_labels(tmp_path: Path) -> None:
    import re
    label = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    out = cards.partition(pairs(scan(tmp_path, ULTRA2_STD_PRO)))
    names = [d.name for d in out.devices] + [c["name"] for c in out.counter_sets]
    names += [n for c in out.counter_sets for n in c["counters"]]
    assert all(label.match(n) for n in names), [n for n in names if not label.match(n)]
    assert len(cards.part_device_name("ffffffff:ff:1f.7", (0, 1, 2))) <= 63


# --- counters in slices -------------------------------------------------------------------

def test_counter_sets_go_in_slices_of_their_own_eight_at_most() -> None:
    sets = [{"name": f"card-{i:02d}", "counters": {"soc-a": {"value": "1"}}} for i in range(17)]
    slices = counters.split(list(reversed(sets)))
    assert [len(s) for s in slices] == [8, 8, 1]
    assert [c["name"] for s in slices for c in s] == [c["name"] for c in sets]
    spec = counters.spec("qaic.qualcomm.com", "node-a", 3, 5, slices[0])
    assert "devices" not in spec and spec["sharedCounters"] == slices[0]
    assert spec["pool"] == {"name": "node-a", "generation": 3, "resourceSliceCount": 5}
    assert counters.split([]) == []


def test_dropped_counters_are_noticed_and_overlap_withdrawn(tmp_path: Path) -> None:
    """Operator situation: an API server without DRAPartitionableDevices stores the slices
    without counters; offering the cards then would let a card and its SoC both be taken."""
    out = cards.partition(pairs(scan(tmp_path, ULTRA2_STD_PRO)))
    devices = [d.to_dict() for d in out.devices]
    sent = {"devices": devices}
    stripped = {"devices": [{k: v for k, v in d.items() if k != "consumesCounters"}
                            for d in devices]}
    assert counters.counters_dropped(sent, stripped)
    assert not counters.counters_dropped(sent, sent)
    assert counters.counters_dropped({"sharedCounters": out.counter_sets}, {})
    assert not counters.counters_dropped({"sharedCounters": out.counter_sets},
                                         {"sharedCounters": out.counter_sets})
    kept = counters.non_overlapping(devices)
    assert [d["name"] for d in kept] == [d["name"] for d in devices
                                          if d["attributes"]["type"]["string"] == "soc"]
    assert all("consumesCounters" not in d for d in kept)


# --- preparing a claim for a card -----------------------------------------------------------

async def test_a_card_claim_is_prepared_as_all_four_socs(tmp_path: Path) -> None:
    """The scheduler allocates the card device; the driver's CDI spec gives the container the
    /dev/accel node of each of its four SoCs and their QIDs, and a part its own SoCs only."""
    import json

    from qaic_device_plugin.dra.backend import QaicDraDriver, cdi_spec_path
    from qaic_device_plugin.kubelet.dra.types import AllocatedClaim, AllocatedDevice, ClaimRef

    states = scan(tmp_path, ULTRA2_STD_PRO)
    driver = QaicDraDriver("node-a", tmp_path / "cdi", partitions=True)
    driver.update(states)
    assert len(driver.counter_sets) == 2
    card_id = sorted({s.soc.card_id for s in states if s.sku.sku is Sku.ULTRA})[1]
    socs = sorted((s for s in states if s.soc.card_id == card_id), key=lambda s: s.soc.pci_address)
    for uid, device, want in [("c1", cards.card_device_name(card_id), socs),
                              ("c2", cards.part_device_name(card_id, (1, 3)), [socs[1], socs[3]])]:
        ref = ClaimRef("ns", uid, uid)
        prepared = await driver.prepare(AllocatedClaim(ref, (
            AllocatedDevice("container-0-request-0", "node-a", device),)))
        assert [p.device for p in prepared] == [device]
        spec = json.loads(cdi_spec_path(tmp_path / "cdi", uid).read_text())
        [cdi] = spec["devices"]
        assert [n["path"] for n in cdi["containerEdits"]["deviceNodes"]] == [
            f"/dev/{s.soc.dev_relpath}" for s in want]
        assert spec["containerEdits"]["env"] == [
            "QAIC_VISIBLE_DEVICES=" + ",".join(str(s.soc.qid) for s in want)]


def test_a_card_stays_in_one_slice(tmp_path: Path) -> None:
    """17 Ultra cards (255 devices) and a Standard card: every card's 15 devices in one slice
    of at most 64, so a SoC's taint (which its card and parts carry too) rewrites one slice."""
    specs = [CardSpec(Sku.ULTRA, numa_node=i % 4) for i in range(17)] + [CardSpec(Sku.STANDARD)]
    out = cards.partition(pairs(scan(tmp_path, specs)))
    slices = counters.split_devices([d.to_dict() for d in out.devices], 64)
    assert [len(s) for s in slices] == [1 + 4 * 15, 60, 60, 60, 15]
    assert sum(map(len, slices)) == len(out.devices)
    where = {}
    for i, s in enumerate(slices):
        for d in s:
            for c in d.get("consumesCounters") or ():
                where.setdefault(c["counterSet"], set()).add(i)
    assert len(where) == 17 and all(len(v) == 1 for v in where.values())
    plain = [{"name": f"d{i:03d}"} for i in range(130)]
    assert [len(s) for s in counters.split_devices(plain, 64)] == [64, 64, 2]


def test_each_slice_offers_its_socs_before_parts_and_cards(tmp_path: Path) -> None:
    """The scheduler tries a node's devices in slice order: SoCs (one counter each) come
    before the 2- and 3-SoC parts and the whole cards, so a one-SoC request does not evaluate
    its class on every card and part first (the scale bench's lever); the SoCs keep their
    name order, so which SoC a request gets is unchanged."""
    specs = [CardSpec(Sku.ULTRA) for _ in range(5)]
    out = cards.partition(pairs(scan(tmp_path, specs)))
    slices = counters.split_devices([d.to_dict() for d in out.devices], 64)
    for s in slices:
        sizes = [len(d.get("consumesCounters", [{}])[0].get("counters") or {}) for d in s]
        assert sizes == sorted(sizes), sizes
        assert sizes[0] == 1 and sizes[-1] == 4
        socs = [d["name"] for d in s if len(d["consumesCounters"][0]["counters"]) == 1]
        assert socs == sorted(socs)
