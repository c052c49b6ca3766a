"""The fake node must look like the kernel's sysfs, or every test built on it proves nothing."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.node import DEMO_CARDS, CardSpec, FakeNode
from qaic_device_plugin.sim.node_cli import main

DEMO = list(DEMO_CARDS)


def write(tmp_path: Path, cards: list[CardSpec] = DEMO, **kw: object) -> FakeNode:
    node = FakeNode(tmp_path / "node", cards, **kw)  # type: ignore[arg-type]
    node.write()
    return node


def all_links(root: Path) -> list[Path]:
    return [
        Path(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if os.path.islink(os.path.join(d, n))
    ]


def fake_util(node: FakeNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(node.qaic_util_path), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_demo_node_shape(tmp_path: Path) -> None:
    node = write(tmp_path)
    socs = node.socs
    assert len(socs) == 10
    assert [s.qid for s in socs] == list(range(10))
    assert [s.pci_address for s in socs] == sorted(s.pci_address for s in socs)
    by_card: dict[int, list[str]] = {}
    for s in socs:
        by_card.setdefault(s.card_index, []).append(s.pci_address)
    assert sorted(len(v) for v in by_card.values()) == [1, 1, 4, 4]
    ultra_numa = {s.numa_node for s in socs if s.sku is Sku.ULTRA}
    assert ultra_numa == {0, 1}
    assert {s.sku for s in socs} == {Sku.ULTRA, Sku.STANDARD, Sku.PRO}


def test_accel_numbers_are_not_qids(tmp_path: Path) -> None:
    node = write(tmp_path)
    socs = node.socs
    assert all(s.accel_index != s.qid for s in socs)
    accels = [s.accel_index for s in socs]  # in QID order
    assert accels != sorted(accels), "accel order must differ from PCI order"
    assert 0 not in accels  # the Intel NPU holds accel0
    assert sorted(accels) == list(range(1, 11))


@pytest.mark.parametrize("n_std", [1, 2, 3, 5])
def test_accel_numbers_small_nodes(tmp_path: Path, n_std: int) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD)] * n_std)
    assert all(s.accel_index != s.qid for s in node.socs)


def test_discover_agrees_with_writer(tmp_path: Path) -> None:
    node = write(tmp_path)
    d = discover(node.sysfs_root)
    assert d.skipped == ()
    assert d.foreign == ("accel0",)
    got = [(s.pci_address, s.accel_index, s.qid, s.card_id, s.numa_node) for s in d.socs]
    want = [(s.pci_address, s.accel_index, s.qid, s.card_id, s.numa_node) for s in node.socs]
    assert got == want


def test_symlinks_are_relative_and_kernel_shaped(tmp_path: Path) -> None:
    node = write(tmp_path)
    sysfs = node.sysfs_root
    links = all_links(sysfs)
    assert links
    for link in links:
        target = os.readlink(link)
        assert not os.path.isabs(target), f"{link} -> {target}"
        real = os.path.realpath(link)
        assert os.path.exists(real), f"dangling {link}"
        assert real.startswith(str(sysfs.resolve()) + os.sep)

    soc = node.socs[0]
    fn_rel = node.function_dir(soc.pci_address).relative_to(sysfs)
    accel = f"accel{soc.accel_index}"
    assert os.readlink(sysfs / "class/accel" / accel) == f"../../{fn_rel}/accel/{accel}"
    assert os.readlink(sysfs / "bus/pci/devices" / soc.pci_address) == f"../../../{fn_rel}"
    assert os.readlink(sysfs / "bus/pci/drivers/qaic" / soc.pci_address) == f"../../../../{fn_rel}"
    assert os.readlink(sysfs / "class/accel" / accel / "device") == f"../../../{soc.pci_address}"
    depth = len(fn_rel.parts)
    assert os.readlink(sysfs / fn_rel / "driver") == "../" * depth + "bus/pci/drivers/qaic"
    assert os.readlink(sysfs / fn_rel / "subsystem") == "../" * depth + "bus/pci"
    assert os.readlink(sysfs / f"dev/char/261:{soc.accel_index}") == f"../../{fn_rel}/accel/{accel}"
    # an Ultra SoC: pci0000:XX / root port / switch upstream / downstream / SoC
    assert fn_rel.parts[0] == "devices" and fn_rel.parts[1].startswith("pci0000:")
    assert len(fn_rel.parts) == 6


def test_attribute_files(tmp_path: Path) -> None:
    node = write(tmp_path)
    soc = node.socs[0]
    fn = node.function_dir(soc.pci_address)
    assert (fn / "vendor").read_text() == "0x17cb\n"
    assert (fn / "device").read_text() == "0xa100\n"
    assert (fn / "class").read_text() == "0x120000\n"
    assert (fn / "numa_node").read_text() == f"{soc.numa_node}\n"
    assert (fn / "subsystem_vendor").read_text() == "0x17cb\n"
    assert (fn / "subsystem_device").read_text().startswith("0x")
    accel = fn / "accel" / f"accel{soc.accel_index}"
    assert (accel / "dev").read_text() == f"261:{soc.accel_index}\n"
    for bridge in (fn.parent, fn.parent.parent, fn.parent.parent.parent):
        assert (bridge / "class").read_text() == "0x060400\n"
        assert os.readlink(bridge / "driver").endswith("bus/pci/drivers/pcieport")
    assert fn.parent.parent.parent.parent.name.startswith("pci0000:")

    npu = node.sysfs_root / "bus/pci/devices" / "0000:00:0b.0"
    assert (npu / "vendor").read_text() == "0x8086\n"
    assert (npu / "device").read_text() == "0x7d1d\n"
    assert os.readlink(npu / "driver").endswith("bus/pci/drivers/intel_vpu")
    assert os.path.realpath(node.sysfs_root / "class/accel/accel0/device") == str(npu.resolve())


def test_tree_survives_being_moved(tmp_path: Path) -> None:
    node = write(tmp_path)
    before = discover(node.sysfs_root)
    moved = tmp_path / "elsewhere" / "host-sys"
    moved.parent.mkdir()
    shutil.copytree(node.sysfs_root, moved, symlinks=True)
    shutil.rmtree(node.sysfs_root)
    assert discover(moved).socs == before.socs


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_char_device_nodes(tmp_path: Path) -> None:
    node = write(tmp_path, device_nodes="char")
    assert node.device_node_kind == "char"
    for s in node.socs:
        st = os.stat(node.dev_root / "accel" / f"accel{s.accel_index}")
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (261, s.accel_index)
    assert stat.S_ISCHR(os.stat(node.dev_root / "accel/accel0").st_mode)


def test_file_device_nodes(tmp_path: Path) -> None:
    node = write(tmp_path, device_nodes="file")
    assert node.device_node_kind == "file"
    for s in node.socs:
        assert (node.dev_root / "accel" / f"accel{s.accel_index}").is_file()


def test_auto_device_nodes(tmp_path: Path) -> None:
    node = write(tmp_path)
    want = "char" if os.geteuid() == 0 else "file"
    assert node.device_node_kind in (want, "file")


def test_remove_and_restore_device_node(tmp_path: Path) -> None:
    node = write(tmp_path)
    s = node.socs[3]
    path = node.dev_root / "accel" / f"accel{s.accel_index}"
    node.remove_device_node(s.pci_address)
    assert not path.exists()
    assert len(discover(node.sysfs_root).socs) == 10  # sysfs does not care
    node.restore_device_node(s.pci_address)
    assert path.exists()


def test_no_foreign(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)], foreign_accel=False)
    d = discover(node.sysfs_root)
    assert d.foreign == ()
    assert node.foreign_pci is None
    assert sorted(s.accel_index for s in d.socs) == [0, 1]
    assert all(s.accel_index != s.qid for s in d.socs)


def test_write_refuses_existing_tree(tmp_path: Path) -> None:
    node = write(tmp_path)
    with pytest.raises(RuntimeError):
        node.write()
    with pytest.raises(FileExistsError):
        FakeNode(node.root, DEMO).write()


def test_remove_soc_leaves_no_trace(tmp_path: Path) -> None:
    node = write(tmp_path)
    victim = node.socs[2]
    node.remove_soc(victim.pci_address)
    assert (
        not node.function_dir(node.socs[0].pci_address).parent.joinpath(victim.pci_address).exists()
    )
    sysfs = node.sysfs_root
    for link in all_links(node.root):
        assert os.path.exists(os.path.realpath(link)), f"dangling {link}"
    assert not (sysfs / "bus/pci/devices" / victim.pci_address).exists()
    assert not (node.dev_root / "accel" / f"accel{victim.accel_index}").exists()
    assert not (sysfs / "class/accel" / f"accel{victim.accel_index}").exists()
    d = discover(sysfs)
    assert victim.pci_address not in {s.pci_address for s in d.socs}
    assert [s.qid for s in d.socs] == list(range(9))  # later SoCs moved down one QID
    assert [(s.pci_address, s.qid) for s in d.socs] == [(s.pci_address, s.qid) for s in node.socs]
    out = fake_util(node, "-q").stdout
    assert victim.pci_address not in out
    assert out.count("QID ") == 9


def test_add_card_hot_plug(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD)])
    gone = node.socs[1]
    node.remove_soc(gone.pci_address)
    new = node.add_card(CardSpec(Sku.PRO, numa_node=1))
    assert len(new) == 1
    assert new[0].accel_index == gone.accel_index  # the kernel reuses the lowest free minor
    d = discover(node.sysfs_root)
    assert d.skipped == ()
    assert [(s.pci_address, s.accel_index, s.qid, s.card_id) for s in d.socs] == [
        (s.pci_address, s.accel_index, s.qid, s.card_id) for s in node.socs
    ]
    assert (node.dev_root / "accel" / f"accel{new[0].accel_index}").exists()
    assert "Sku Type:PCIe Pro" in fake_util(node, "-q").stdout

    ultra = node.add_card(CardSpec(Sku.ULTRA, numa_node=0))
    assert len(ultra) == 4 and len({s.card_id for s in ultra}) == 1
    # a card hot-added on NUMA node 0 sorts before the NUMA 1 card: QIDs can shift
    assert node.soc(new[0].pci_address).qid == len(node.socs) - 1
    assert len(discover(node.sysfs_root).socs) == len(node.socs) == 9


def test_set_status_and_fake_qaic_util(tmp_path: Path) -> None:
    node = write(tmp_path)
    s = node.socs[4]
    node.set_status(s.pci_address, "Error")
    res = fake_util(node, "-d", str(s.qid), "-q")
    assert res.returncode == 0
    assert res.stdout.startswith(f"QID {s.qid}\n")
    assert "\tStatus:Error\n" in res.stdout
    assert f"\tPCI Address:{s.pci_address}\n" in res.stdout
    assert f"\tDev Link:/dev/accel/accel{s.accel_index} \n" in res.stdout
    assert "Sku Type" not in res.stdout and "Dram Total" not in res.stdout
    ok = fake_util(node, "-d", "0", "-q").stdout
    assert "Status:Ready" in ok and "Sku Type:PCIe Ultra" in ok and "Nsp Total:16" in ok
    assert fake_util(node, "-d", "99", "-q").returncode == 1
    assert fake_util(node).returncode == 2
    assert fake_util(node, "-x").returncode == 2
    # the state file is replaced atomically and stays valid JSON
    state = json.loads(node.state_path.read_text())
    assert [d["status"] for d in state["devices"]].count("Error") == 1


def test_ai080_device_id(tmp_path: Path) -> None:
    node = write(tmp_path, [CardSpec(Sku.AI080), CardSpec(Sku.ULTRA_080)])
    d = discover(node.sysfs_root)
    assert {s.pci_device for s in d.socs} == {0xA080}
    assert len(d.socs) == 5
    assert "Sku Type:PCIe Ultra 080" in fake_util(node, "-q").stdout


def test_cli_json(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    res = subprocess.run(
        [sys.executable, "-m", "qaic_device_plugin.sim.node_cli", "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(res.stdout)
    assert len(info["socs"]) == 10
    assert info["foreign"] == "0000:00:0b.0"
    d = discover(root / "sys")
    assert [(x["pci"], x["accel"], x["qid"], x["card_id"], x["numa"]) for x in info["socs"]] == [
        (s.pci_address, s.accel_index, s.qid, s.card_id, s.numa_node) for s in d.socs
    ]
    assert {x["sku"] for x in info["socs"]} == {"ultra", "std", "pro"}
    assert {x["numa"] for x in info["socs"] if x["sku"] == "ultra"} == {0, 1}


def test_cli_text_counts_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cli"
    assert (
        main(["--root", str(root), "--ultra", "1", "--std", "0", "--pro", "2", "--no-foreign"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("ultra") == 4 and out.count(" pro ") == 2
    assert "foreign accel0: none" in out
    assert len(discover(root / "sys").socs) == 6
    assert main(["--root", str(root)]) == 1  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
