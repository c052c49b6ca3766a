"""SKU resolution: which evidence wins, and every Sku Type string the runtime can print."""

from __future__ import annotations

from pathlib import Path

import pytest

from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.qaic.model import QaicUtilEntry, Sku, SkuDecision, SkuSource, Soc
from qaic_device_plugin.qaic.qaic_util import query_qaic_util
from qaic_device_plugin.qaic.sku import (
    SKU_TYPE_TEXT,
    SKU_TYPES,
    parse_sku,
    resolve_skus,
    sku_from_type,
)
from qaic_device_plugin.sim.node import DEMO_CARDS, CardSpec, FakeNode

FACTS_SKU_TYPES = {
    "PCIe": Sku.STANDARD,
    "PCIe Pro": Sku.PRO,
    "PCIe Ultra": Sku.ULTRA,
    "PCIe Lite": Sku.LITE,
    "M.2": Sku.M2,
    "Auto": Sku.AUTO,
    "PCIe Ultra Plus": Sku.ULTRA_PLUS,
    "PCIe 080": Sku.AI080,
    "PCIe Ultra 080": Sku.ULTRA_080,
    "Invalid": None,
}


def test_every_sku_type_string() -> None:
    assert dict(SKU_TYPES) == FACTS_SKU_TYPES
    for text, sku in FACTS_SKU_TYPES.items():
        assert sku_from_type(text) is sku
        assert sku_from_type(f"{text}  ") is sku
    assert set(SKU_TYPE_TEXT) == set(Sku)  # every SKU has its qaic-util spelling


def test_unknown_sku_type() -> None:
    assert sku_from_type(None) is None
    assert sku_from_type("PCIe Mega") is None
    assert sku_from_type("") is None


@pytest.mark.parametrize("sku", list(Sku))
def test_parse_sku_values_and_names(sku: Sku) -> None:
    assert parse_sku(sku.value) is sku
    assert parse_sku(f" {sku.value.upper()} ") is sku
    assert parse_sku(sku.name.lower()) is sku
    assert parse_sku(sku.name.lower().replace("_", "-")) is sku


def test_parse_sku_rejects_with_the_accepted_list() -> None:
    with pytest.raises(ValueError) as err:
        parse_sku("PCIe Ultra")
    msg = str(err.value)
    assert "'PCIe Ultra'" in msg
    for sku in Sku:
        assert sku.value in msg
    with pytest.raises(ValueError):
        parse_sku("")


# ----- precedence ---------------------------------------------------------------------------

# An Ultra card (4 SoCs behind upstream port 0000:01:00.0) and a lone Standard SoC.
CARD = "0000:01:00.0"
U = ["0000:03:00.0", "0000:04:00.0", "0000:05:00.0", "0000:06:00.0"]
S = "0000:07:00.0"
SOCS = [Soc(p, 10 + i, 0xA100, 0, CARD, i) for i, p in enumerate(U)] + [Soc(S, 1, 0xA100, 0, S, 4)]


def util(*rows: tuple[str, str, str | None]) -> list[QaicUtilEntry]:
    return [QaicUtilEntry(i, pci, status, sku) for i, (pci, status, sku) in enumerate(rows)]


@pytest.mark.parametrize(
    ("case", "qaic_util", "overrides", "pci", "want"),
    [
        (
            "override beats qaic-util",
            util((S, "Ready", "PCIe")),
            {S: Sku.PRO},
            S,
            SkuDecision(Sku.PRO, SkuSource.OVERRIDE),
        ),
        (
            "override beats topology",
            None,
            {U[0]: Sku.ULTRA_080},
            U[0],
            SkuDecision(Sku.ULTRA_080, SkuSource.OVERRIDE),
        ),
        (
            "override key case-insensitive",
            None,
            {S.upper(): Sku.LITE},
            S,
            SkuDecision(Sku.LITE, SkuSource.OVERRIDE),
        ),
        (
            "override only for its own SoC",
            None,
            {U[0]: Sku.PRO},
            U[1],
            SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY),
        ),
        (
            "own qaic-util",
            util((S, "Ready", "PCIe Pro")),
            {},
            S,
            SkuDecision(Sku.PRO, SkuSource.QAIC_UTIL),
        ),
        (
            "own qaic-util beats sibling",
            util((U[0], "Ready", "PCIe Ultra"), (U[1], "Ready", "PCIe Ultra Plus")),
            {},
            U[1],
            SkuDecision(Sku.ULTRA_PLUS, SkuSource.QAIC_UTIL),
        ),
        (
            "sibling when not Ready",
            util((U[0], "Error", None), (U[1], "Ready", "PCIe Ultra 080")),
            {},
            U[0],
            SkuDecision(Sku.ULTRA_080, SkuSource.SIBLING),
        ),
        (
            "sibling when absent from output",
            util((U[3], "Ready", "PCIe Ultra")),
            {},
            U[0],
            SkuDecision(Sku.ULTRA, SkuSource.SIBLING),
        ),
        (
            "sibling majority",
            util(
                (U[0], "Ready", "PCIe Ultra Plus"),
                (U[1], "Ready", "PCIe Ultra"),
                (U[2], "Ready", "PCIe Ultra"),
            ),
            {},
            U[3],
            SkuDecision(Sku.ULTRA, SkuSource.SIBLING),
        ),
        (
            "sibling tie: lowest address",
            util((U[1], "Ready", "PCIe Ultra"), (U[2], "Ready", "PCIe Ultra Plus")),
            {},
            U[3],
            SkuDecision(Sku.ULTRA, SkuSource.SIBLING),
        ),
        (
            # single-SoC cards behind a server-board switch: a Standard neighbour says
            # nothing about the card next to it (it may be a Pro)
            "one-SoC siblings say nothing",
            util((U[0], "Ready", "PCIe"), (U[1], "Ready", "PCIe"), (U[2], "Ready", "PCIe Pro")),
            {},
            U[3],
            SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY),
        ),
        (
            "one-SoC sibling does not outvote an Ultra one",
            util((U[0], "Ready", "PCIe"), (U[1], "Ready", "PCIe"), (U[2], "Ready", "PCIe Ultra")),
            {},
            U[3],
            SkuDecision(Sku.ULTRA, SkuSource.SIBLING),
        ),
        (
            "other cards do not count",
            util((U[0], "Ready", "PCIe Ultra")),
            {},
            S,
            SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY),
        ),
        (
            "Invalid falls through",
            util((S, "Ready", "Invalid")),
            {},
            S,
            SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY),
        ),
        (
            "unknown falls through",
            util((U[0], "Ready", "PCIe Mega")),
            {},
            U[0],
            SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY),
        ),
        (
            "address case in qaic-util",
            util((S.upper(), "Ready", "M.2")),
            {},
            S,
            SkuDecision(Sku.M2, SkuSource.QAIC_UTIL),
        ),
        # a shared switch alone is never Ultra: it may be four single-SoC cards (issue 13)
        ("topology multi-SoC", None, {}, U[2], SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)),
        ("topology lone SoC", [], {}, S, SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_precedence(
    case: str,
    qaic_util: list[QaicUtilEntry] | None,
    overrides: dict[str, Sku],
    pci: str,
    want: SkuDecision,
) -> None:
    got = resolve_skus(SOCS, qaic_util, overrides)
    assert set(got) == {s.pci_address for s in SOCS}
    assert got[pci] == want, case


def test_topology_card_with_only_one_soc_visible() -> None:
    """A SoC behind a shared switch whose siblings have no accel node: the switch alone still
    proves nothing (before issue 13 this said Ultra)."""
    lone = [SOCS[0]]
    assert resolve_skus(lone, None, {})[U[0]] == SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)


def test_empty() -> None:
    assert resolve_skus([], None, {S: Sku.PRO}) == {}


# ----- end to end on the fake node ----------------------------------------------------------


async def test_fake_node_end_to_end(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "n", list(DEMO_CARDS), device_nodes="file")
    node.write()
    ultra = next(s for s in node.socs if s.sku is Sku.ULTRA)
    std = next(s for s in node.socs if s.sku is Sku.STANDARD)
    node.set_status(ultra.pci_address, "Error")
    node.set_status(std.pci_address, "Initializing")
    socs = discover(node.sysfs_root).socs
    entries = await query_qaic_util(str(node.qaic_util_path), 20)
    got = resolve_skus(socs, entries, {})
    for s in node.socs:
        source = {std.pci_address: SkuSource.TOPOLOGY, ultra.pci_address: SkuSource.SIBLING}.get(
            s.pci_address, SkuSource.QAIC_UTIL
        )
        assert got[s.pci_address] == SkuDecision(s.sku, source), s
    # without qaic-util, the Pro card reads as Standard: only an override can fix that
    pro = next(s for s in node.socs if s.sku is Sku.PRO)
    blind = resolve_skus(socs, None, {pro.pci_address: parse_sku("pro")})
    assert blind[pro.pci_address] == SkuDecision(Sku.PRO, SkuSource.OVERRIDE)
    assert blind[std.pci_address] == SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)
    # nor the Ultra card as Ultra: its switch looks like a server board's (issue 13)
    assert blind[ultra.pci_address] == SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)


async def test_fake_node_all_skus(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "n", [CardSpec(sku) for sku in Sku], device_nodes="file")
    node.write()
    socs = discover(node.sysfs_root).socs
    got = resolve_skus(socs, await query_qaic_util(str(node.qaic_util_path), 20), {})
    assert {p: d.sku for p, d in got.items()} == {s.pci_address: s.sku for s in node.socs}
