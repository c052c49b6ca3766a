"""discover(): which SoCs a sysfs tree holds, and that no content of the tree can crash it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.qaic.model import Discovery, Sku
from qaic_device_plugin.sim.node import DEMO_CARDS, CardSpec, FakeNode


def write(root: Path, cards: list[CardSpec] | None = None, **kw: bool) -> FakeNode:
    node = FakeNode(
        root / "node", list(DEMO_CARDS) if cards is None else cards, device_nodes="file", **kw
    )
    node.write()
    return node


def expected(node: FakeNode) -> list[tuple[str, int, int, str, int | None]]:
    return [
        (s.pci_address, s.accel_index, s.qid, s.card_id, None if s.numa_node < 0 else s.numa_node)
        for s in node.socs
    ]


def got(d: Discovery) -> list[tuple[str, int, int, str, int | None]]:
    return [(s.pci_address, s.accel_index, s.qid, s.card_id, s.numa_node) for s in d.socs]


def reasons(d: Discovery) -> dict[str, str]:
    return {s.path: s.reason for s in d.skipped}


# ----- the rules ------------------------------------------------------------------------------


def test_demo_node(tmp_path: Path) -> None:
    node = write(tmp_path)
    d = discover(node.sysfs_root)
    assert got(d) == expected(node)
    assert d.skipped == ()
    assert [s.pci_address for s in d.socs] == sorted(s.pci_address for s in d.socs)
    assert all(s.pci_device == 0xA100 for s in d.socs)


def test_foreign_accel_is_left_alone(tmp_path: Path) -> None:
    node = write(tmp_path)
    d = discover(node.sysfs_root)
    assert d.foreign == ("accel0",)
    assert 0 not in {s.accel_index for s in d.socs}
    assert node.foreign_pci not in {s.pci_address for s in d.socs}


def test_accel_index_is_not_qid(tmp_path: Path) -> None:
    d = discover(write(tmp_path).sysfs_root)
    assert all(s.accel_index != s.qid for s in d.socs)
    assert [s.qid for s in d.socs] == list(range(10))


def test_qid_counts_functions_without_accel_node(tmp_path: Path) -> None:
    node = write(tmp_path)
    hidden = node.socs[1]  # e.g. a SoC mid-reset whose accel node is gone
    (node.sysfs_root / "class/accel" / f"accel{hidden.accel_index}").unlink()
    shutil.rmtree(node.function_dir(hidden.pci_address) / "accel")
    d = discover(node.sysfs_root)
    assert d.skipped == ()
    assert got(d) == [e for e in expected(node) if e[0] != hidden.pci_address]
    assert [s.qid for s in d.socs] == [0, *range(2, 10)]


def test_qaic_function_bound_elsewhere_still_counts(tmp_path: Path) -> None:
    """A qaic function with no driver (e.g. vfio) still takes a QID, as in the runtime."""
    node = write(tmp_path, [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)])
    first = node.socs[0]
    fn = node.function_dir(first.pci_address)
    (node.sysfs_root / "class/accel" / f"accel{first.accel_index}").unlink()
    (fn / "driver").unlink()
    d = discover(node.sysfs_root)
    assert [(s.pci_address, s.qid) for s in d.socs] == [(node.socs[1].pci_address, 1)]


def test_ultra_card_grouping(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.ULTRA, numa_node=1)])
    d = discover(node.sysfs_root)
    cards: dict[str, list[str]] = {}
    for s in d.socs:
        cards.setdefault(s.card_id, []).append(s.pci_address)
    assert sorted(len(v) for v in cards.values()) == [4, 4]
    for card_id, members in cards.items():
        assert card_id not in members
        upstream = node.function_dir(members[0]).parent.parent
        assert upstream.name == card_id
        assert (upstream / "class").read_text().startswith("0x0604")


def test_standard_on_root_port_is_own_card(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD), CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)])
    d = discover(node.sysfs_root)
    assert [s.card_id for s in d.socs] == [s.pci_address for s in d.socs]


def test_platform_switch_with_more_than_four_socs(tmp_path: Path) -> None:
    cards = [CardSpec(Sku.STANDARD, platform_switch=0) for _ in range(5)]
    cards.append(CardSpec(Sku.ULTRA, platform_switch=0))
    node = write(tmp_path, cards)
    d = discover(node.sysfs_root)
    assert len(d.socs) == 9
    std = [s for s in d.socs if node.soc(s.pci_address).sku is Sku.STANDARD]
    assert len(std) == 5
    assert all(s.card_id == s.pci_address for s in std)  # 5 behind one switch: not a card
    ultra = [s for s in d.socs if node.soc(s.pci_address).sku is Sku.ULTRA]
    assert len({s.card_id for s in ultra}) == 1  # the on-card switch still groups
    assert got(d) == expected(node)


def test_two_singles_behind_a_platform_switch_look_like_one_card(tmp_path: Path) -> None:
    """Known limit of the topology rule: 2..4 SoCs behind any switch read as one card."""
    node = write(tmp_path, [CardSpec(Sku.STANDARD, platform_switch=0)] * 2)
    d = discover(node.sysfs_root)
    assert len({s.card_id for s in d.socs}) == 1
    assert {s.card_id for s in node.socs} == {s.pci_address for s in node.socs}  # the truth


def test_numa_none_and_missing(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD, numa_node=-1), CardSpec(Sku.PRO)])
    second = node.socs[1]
    (node.function_dir(second.pci_address) / "numa_node").unlink()  # CONFIG_NUMA=n
    d = discover(node.sysfs_root)
    assert [s.numa_node for s in d.socs] == [None, None]
    assert d.skipped == ()


def test_sysfs_root_missing_or_empty(tmp_path: Path) -> None:
    assert discover(tmp_path / "nope") == Discovery(socs=())
    (tmp_path / "empty").mkdir()
    assert discover(tmp_path / "empty") == Discovery(socs=())


def test_unknown_qaic_device_id_is_foreign(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)], foreign_accel=False)
    s = node.socs[0]
    (node.function_dir(s.pci_address) / "device").write_text("0xa000\n")
    d = discover(node.sysfs_root)
    assert d.foreign == (f"accel{s.accel_index}",)
    assert [x.pci_address for x in d.socs] == [node.socs[1].pci_address]
    assert d.socs[0].qid == 0  # 0xa000 is not a qaic function, so it takes no QID


# ----- malformed entries: skipped, reported, logged -----------------------------------------


def corrupt_vendor_garbage(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").write_text("qualcomm\n")


def corrupt_vendor_missing(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").unlink()


def corrupt_vendor_empty(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").write_bytes(b"")


def corrupt_vendor_binary(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").write_bytes(b"\xff\xfe\x00\x17")


def corrupt_vendor_is_dir(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").unlink()
    (fn / "vendor").mkdir()


def corrupt_vendor_fifo(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "vendor").unlink()
    os.mkfifo(fn / "vendor")  # must not block discovery


def corrupt_device_link_broken(node: FakeNode, fn: Path, accel: Path) -> None:
    (accel / "device").unlink()
    os.symlink("../../../0000:ff:1f.7", accel / "device")


def corrupt_device_link_loop(node: FakeNode, fn: Path, accel: Path) -> None:
    (accel / "device").unlink()
    os.symlink("device", accel / "device")


def corrupt_device_link_missing(node: FakeNode, fn: Path, accel: Path) -> None:
    (accel / "device").unlink()


def corrupt_device_link_escapes(node: FakeNode, fn: Path, accel: Path) -> None:
    outside = node.root / "outside" / fn.name
    shutil.copytree(fn, outside, symlinks=True)
    (accel / "device").unlink()
    os.symlink(outside, accel / "device")


def corrupt_device_link_not_pci(node: FakeNode, fn: Path, accel: Path) -> None:
    (accel / "device").unlink()
    os.symlink("..", accel / "device")


def corrupt_numa_garbage(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "numa_node").write_text("zero\n")


def corrupt_numa_out_of_range(node: FakeNode, fn: Path, accel: Path) -> None:
    (fn / "numa_node").write_text("-7\n")


def corrupt_class_link_loop(node: FakeNode, fn: Path, accel: Path) -> None:
    link = node.sysfs_root / "class/accel" / accel.name
    link.unlink()
    os.symlink(accel.name, link)


def corrupt_bus_link_missing(node: FakeNode, fn: Path, accel: Path) -> None:
    (node.sysfs_root / "bus/pci/devices" / fn.name).unlink()


CORRUPTIONS = [
    corrupt_vendor_garbage,
    corrupt_vendor_missing,
    corrupt_vendor_empty,
    corrupt_vendor_binary,
    corrupt_vendor_is_dir,
    corrupt_vendor_fifo,
    corrupt_device_link_broken,
    corrupt_device_link_loop,
    corrupt_device_link_missing,
    corrupt_device_link_escapes,
    corrupt_device_link_not_pci,
    corrupt_numa_garbage,
    corrupt_numa_out_of_range,
    corrupt_class_link_loop,
    corrupt_bus_link_missing,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[8:])
def test_malformed_soc_is_skipped_and_reported(
    tmp_path: Path, corrupt: object, caplog: pytest.LogCaptureFixture
) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO), CardSpec(Sku.STANDARD)])
    victim = node.socs[2]  # the last one, so the others' QIDs stay valid either way
    fn = node.function_dir(victim.pci_address)
    accel_name = f"accel{victim.accel_index}"
    corrupt(node, fn, fn / "accel" / accel_name)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="qaic_device_plugin.qaic.discovery"):
        d = discover(node.sysfs_root)
    assert got(d) == expected(node)[:2]
    assert d.skipped, "the bad entry must be reported"
    assert not any("unexpected" in s.reason for s in d.skipped)
    records = [r for r in caplog.records if getattr(r, "event", None) == "sysfs_skipped"]
    assert {(r.path, r.reason) for r in records} == {  # type: ignore[attr-defined]
        (s.path, s.reason) for s in d.skipped
    }


def test_skipped_reason_is_specific(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD)], foreign_accel=False)
    s = node.socs[0]
    (node.function_dir(s.pci_address) / "numa_node").write_text("zero\n")
    d = discover(node.sysfs_root)
    accel_path = str(node.sysfs_root.resolve() / "class/accel" / f"accel{s.accel_index}")
    assert reasons(d) == {accel_path: "numa_node is not a number: 'zero'"}


def test_bad_class_accel_name(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD)])
    os.symlink("accel1", node.sysfs_root / "class/accel/card0")
    d = discover(node.sysfs_root)
    assert len(d.socs) == 1
    assert list(reasons(d).values()) == ["name is not accelN"]


def test_two_accel_links_to_one_soc(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD)], foreign_accel=False)
    s = node.socs[0]
    os.symlink(f"accel{s.accel_index}", node.sysfs_root / "class/accel/accel9")
    d = discover(node.sysfs_root)
    assert [x.accel_index for x in d.socs] == [s.accel_index]
    assert len(d.skipped) == 1


def test_bridge_class_unreadable_means_own_card(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.ULTRA)])
    s = node.socs[0]
    (node.function_dir(s.pci_address).parent.parent / "class").write_text("bridge?\n")
    d = discover(node.sysfs_root)
    assert [x.card_id for x in d.socs] == [x.pci_address for x in d.socs]


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root reads mode-000 files anyway; drop the effective uid so permissions bite."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.parametrize("target", ["vendor", "dir"])
def test_permission_denied(target: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # pytest's tmp_path is private to root
        node = write(Path(tmp), [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)])
        fn = node.function_dir(node.socs[1].pci_address)
        (fn if target == "dir" else fn / "vendor").chmod(0)
        try:
            with unprivileged():
                d = discover(node.sysfs_root)
        finally:
            fn.chmod(0o755)
            (fn / "vendor").chmod(0o644)
        assert [s.pci_address for s in d.socs] == [node.socs[0].pci_address]
        assert any("Permission denied" in s.reason for s in d.skipped), d.skipped


# ----- random corruption --------------------------------------------------------------------


def tree_entries(root: Path) -> list[Path]:
    out: list[Path] = []
    for d, dirs, files in os.walk(root):
        out += [Path(d, n) for n in sorted(dirs) + sorted(files)]
    return sorted(out)


def apply(op: str, path: Path, data: bytes) -> None:
    if not os.path.lexists(path):
        return  # an earlier op removed it (or its parent)
    is_link = path.is_symlink()
    is_dir = path.is_dir() and not is_link
    if op == "delete":
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
    elif op == "loop":
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        os.symlink(path.name, path)
    elif op == "dangle":
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        os.symlink("../no/such/thing", path)
    elif op == "chmod000":
        os.chmod(path, 0, follow_symlinks=False) if not is_link else None
    elif op in ("truncate", "garble") and path.is_file() and not is_link:
        path.write_bytes(b"" if op == "truncate" else data)


def restore_modes(root: Path) -> None:
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


HOT_NAMES = {"vendor", "device", "class", "numa_node", "driver", "dev"}
OPS = st.sampled_from(["truncate", "garble", "delete", "loop", "dangle", "chmod000"])


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    cards=st.lists(
        st.builds(
            CardSpec,
            sku=st.sampled_from([Sku.STANDARD, Sku.PRO, Sku.ULTRA]),
            numa_node=st.integers(-1, 2),
            platform_switch=st.none() | st.just(0),
        ),
        min_size=1,
        max_size=4,
    ),
    ops=st.lists(
        st.tuples(OPS, st.floats(0, 1, exclude_max=True), st.booleans(), st.binary(max_size=12)),
        min_size=1,
        max_size=8,
    ),
)
def test_random_corruption_never_raises(
    cards: list[CardSpec], ops: list[tuple[str, float, bool, bytes]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        node = write(Path(tmp), cards)
        written = {s.pci_address: s for s in node.socs}
        everything = tree_entries(node.sysfs_root)
        hot = [
            p
            for p in everything
            if p.name in HOT_NAMES
            or p.name.startswith("accel")
            or p.parent.name in ("devices", "qaic")
        ]
        try:
            for op, where, focused, data in ops:
                entries = hot if focused else everything
                apply(op, entries[int(where * len(entries))], data)
            with unprivileged():
                d = discover(node.sysfs_root)
        finally:
            restore_modes(Path(tmp))
        assert not any("unexpected" in s.reason for s in d.skipped), d.skipped
        for soc in d.socs:
            assert soc.pci_address in written, "reported a SoC that is not in the tree"
            assert soc.accel_index == written[soc.pci_address].accel_index
        assert len({s.qid for s in d.socs}) == len(d.socs)
        assert [s.pci_address for s in d.socs] == sorted(s.pci_address for s in d.socs)


def test_fifo_does_not_block_card_grouping(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.ULTRA)])
    cls = node.function_dir(node.socs[0].pci_address).parent / "class"
    cls.unlink()
    os.mkfifo(cls)
    assert stat.S_ISFIFO(os.stat(cls).st_mode)
    d = discover(node.sysfs_root)
    assert len(d.socs) == 4
