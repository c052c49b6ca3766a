"""Card evidence and the QID cross-check (issue 13 items 4 and 8), in the pure modules: which
switch groupings are proven, which QIDs QAIC_VISIBLE_DEVICES carries, and what `require` will
vouch for."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qaic_device_plugin.deviceplugin.backend import QaicResource
from qaic_device_plugin.kubelet.types import Refusal, RefusalKind
from qaic_device_plugin.qaic.cards import CardDecision, check_qids, guessed_cards, resolve_cards
from qaic_device_plugin.qaic.inventory import Inventory, SocState
from qaic_device_plugin.qaic.model import (
    CardEvidence,
    QaicUtilEntry,
    Sku,
    SkuDecision,
    SkuSource,
    Soc,
)
from qaic_device_plugin.qaic.sku import SKU_TYPE_TEXT, resolve_skus
from qaic_device_plugin.qaic.topology import MultiSocPolicy
from qaic_device_plugin.sim.node import CardSpec, FakeNode

SWITCH = "0000:01:00.0"
G = ["0000:03:00.0", "0000:04:00.0", "0000:05:00.0", "0000:06:00.0"]  # behind one switch
LONE = "0000:07:00.0"
SOCS = [Soc(p, 10 + i, 0xA100, 0, SWITCH, i, CardEvidence.TOPOLOGY) for i, p in enumerate(G)]
SOCS.append(Soc(LONE, 1, 0xA100, 0, LONE, 4))


def util(*rows: tuple[str, str | None]) -> list[QaicUtilEntry]:
    return [QaicUtilEntry(i, pci, "Ready", sku) for i, (pci, sku) in enumerate(rows)]


def cards(
    qaic_util: list[QaicUtilEntry] | None, overrides: dict[str, Sku] | None = None
) -> dict[str, CardDecision]:
    return resolve_cards(SOCS, resolve_skus(SOCS, qaic_util, overrides or {}))


def test_without_evidence_a_switch_grouping_stays_a_guess() -> None:
    got = cards(None)
    assert {got[p] for p in G} == {CardDecision(SWITCH, CardEvidence.TOPOLOGY)}
    assert got[LONE] == CardDecision(LONE, CardEvidence.ALONE)
    assert not CardEvidence.TOPOLOGY.certain and CardEvidence.ALONE.certain


def test_firmware_says_single_soc_cards_so_each_is_its_own() -> None:
    got = cards(util((G[0], "PCIe"), (G[1], "PCIe"), (G[2], "PCIe"), (G[3], "PCIe Pro")))
    assert [got[p] for p in G] == [CardDecision(p, CardEvidence.QAIC_UTIL) for p in G]


def test_firmware_ultra_proves_the_grouping_and_a_silent_sibling_joins_it() -> None:
    got = cards(util((G[0], "PCIe Ultra"), (G[1], "PCIe Ultra"), (G[2], None)))
    assert {got[p] for p in G} == {CardDecision(SWITCH, CardEvidence.QAIC_UTIL)}


def test_mixed_answers_split_the_group() -> None:
    got = cards(util((G[0], "PCIe Ultra"), (G[1], "PCIe")))
    assert got[G[0]] == CardDecision(SWITCH, CardEvidence.QAIC_UTIL)
    assert got[G[1]] == CardDecision(G[1], CardEvidence.QAIC_UTIL)


def test_overrides_are_evidence_per_soc() -> None:
    got = cards(None, {G[0]: Sku.ULTRA, G[1]: Sku.PRO})
    assert got[G[0]] == CardDecision(SWITCH, CardEvidence.OVERRIDE)
    assert got[G[1]] == CardDecision(G[1], CardEvidence.OVERRIDE)
    assert got[G[2]] == CardDecision(SWITCH, CardEvidence.TOPOLOGY)  # not named: still a guess


def test_guessed_cards_lists_only_unproven_groups() -> None:
    socs = [Soc(p, 1, 0xA100, 0, SWITCH, i, CardEvidence.TOPOLOGY) for i, p in enumerate(G[:2])]
    socs.append(Soc(G[2], 1, 0xA100, 0, "0000:09:00.0", 2, CardEvidence.QAIC_UTIL))
    assert guessed_cards(socs) == {SWITCH: G[:2]}


def test_weakest_sku_source() -> None:
    assert SkuSource.weakest([]) is None
    assert SkuSource.weakest([SkuSource.QAIC_UTIL, SkuSource.OVERRIDE]) is SkuSource.OVERRIDE
    assert SkuSource.weakest([SkuSource.SIBLING, SkuSource.OVERRIDE]) is SkuSource.SIBLING
    assert SkuSource.weakest(list(SkuSource)) is SkuSource.TOPOLOGY


# ----- QIDs ---------------------------------------------------------------------------------


def test_qaic_util_qids_win_where_listed() -> None:
    entries = [QaicUtilEntry(0, G[1], "Ready"), QaicUtilEntry(1, G[0].upper(), "Error")]
    check = check_qids(SOCS, entries)
    assert check.qids == {G[0]: 1, G[1]: 0, G[2]: 2, G[3]: 3, LONE: 4}
    assert check.mismatched == {G[0]: (0, 1), G[1]: (1, 0)}
    assert check_qids(SOCS, []).mismatched == {}


def test_inventory_keeps_qaic_util_qids_through_an_outage_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = FakeNode(
        tmp_path / "n", [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO, 1)], device_nodes="file"
    )
    node.write()
    a, b = node.socs
    swapped = [
        QaicUtilEntry(1, a.pci_address, "Ready", SKU_TYPE_TEXT[a.sku]),
        QaicUtilEntry(0, b.pci_address, "Ready", SKU_TYPE_TEXT[b.sku]),
    ]
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    caplog.set_level(logging.INFO, logger="qaic_device_plugin.qaic.inventory")

    def qids(util: list[QaicUtilEntry] | None) -> dict[str, int]:
        return {s.soc.pci_address: s.soc.qid for s in inv.scan(util).socs}

    assert qids(swapped) == {a.pci_address: 1, b.pci_address: 0}
    assert qids(swapped) == {a.pci_address: 1, b.pci_address: 0}
    assert qids(None) == {a.pci_address: 1, b.pci_address: 0}  # qaic-util failed once
    warned = [r for r in caplog.records if getattr(r, "event", None) == "qid_mismatch"]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].__dict__["ours"] == {a.pci_address: 0, b.pci_address: 1}
    assert warned[0].__dict__["qaic_util"] == {a.pci_address: 1, b.pci_address: 0}
    # the node changed while qaic-util was out: its old map no longer says anything
    node.add_card(CardSpec(Sku.STANDARD))
    assert list(qids(None).values()) == [0, 1, 2]


# ----- what QAIC_MULTI_SOC_POLICY vouches for ------------------------------------------------


def state(soc: Soc) -> SocState:
    return SocState(soc, SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY))


async def resource(policy: MultiSocPolicy, counted: list[str], shares: int = 1) -> QaicResource:
    res = QaicResource(
        "qualcomm.com/qaic-std",
        multi_soc_policy=policy,
        shares=shares,
        on_cross_card=lambda name, rpc: counted.append(rpc),
    )
    await res.update([state(s) for s in SOCS])
    return res


async def test_require_refuses_a_guessed_card_and_says_what_to_do() -> None:
    counted: list[str] = []
    res = await resource(MultiSocPolicy.REQUIRE, counted)
    with pytest.raises(Refusal) as err:
        await res.allocate([G])
    assert err.value.kind is RefusalKind.FAILED_PRECONDITION
    for words in ("no firmware evidence", SWITCH, "qaic-util", "QAIC_SKU_OVERRIDES"):
        assert words in str(err.value)
    assert counted == ["allocate"]
    await res.allocate([G[:1]])  # a single SoC claims no card
    assert counted == ["allocate"]


async def test_require_admits_a_proven_card() -> None:
    counted: list[str] = []
    res = await resource(MultiSocPolicy.REQUIRE, counted)
    proven = [Soc(p, 10 + i, 0xA100, 0, SWITCH, i, CardEvidence.QAIC_UTIL) for i, p in enumerate(G)]
    await res.update([state(s) for s in proven])
    (out,) = await res.allocate([G])
    assert len(out.devices) == 4 and counted == []


async def test_prefer_admits_a_guessed_card_and_counts_it() -> None:
    counted: list[str] = []
    res = await resource(MultiSocPolicy.PREFER, counted)
    (out,) = await res.allocate([G[:2]])
    assert out.envs["QAIC_VISIBLE_DEVICES"] == "0,1" and counted == ["allocate"]


async def test_shares_turn_card_claims_off() -> None:
    counted: list[str] = []
    res = await resource(MultiSocPolicy.REQUIRE, counted, shares=2)
    await res.allocate([[f"{G[0]}::0", f"{G[1]}::1"]])
    assert counted == []
