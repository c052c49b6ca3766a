"""The NFD feature file: content for the demo node, label validity, atomic and minimal writes."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from qaic_device_plugin.qaic import nfd
from qaic_device_plugin.qaic.inventory import Inventory, NodeState
from qaic_device_plugin.qaic.model import QaicUtilEntry, Sku
from qaic_device_plugin.qaic.nfd import NfdFeatureFile, valid_label
from qaic_device_plugin.qaic.sku import SKU_TYPE_TEXT
from qaic_device_plugin.sim.node import CardSpec, FakeNode

DEMO = """\
qualcomm.com/qaic.present=true
qualcomm.com/qaic.driver=accel
qualcomm.com/qaic.socs=10
qualcomm.com/qaic.cards=4
qualcomm.com/qaic.sku.pro=true
qualcomm.com/qaic.sku.pro.socs=1
qualcomm.com/qaic.sku.pro.cards=1
qualcomm.com/qaic.sku.std=true
qualcomm.com/qaic.sku.std.socs=1
qualcomm.com/qaic.sku.std.cards=1
qualcomm.com/qaic.sku.ultra=true
qualcomm.com/qaic.sku.ultra.socs=8
qualcomm.com/qaic.sku.ultra.cards=2
qualcomm.com/qaic.sku-source=qaic-util
"""

# Kubernetes label syntax, written out independently of the module under test
# (k8s.io/apimachinery validation: IsQualifiedName, IsValidLabelValue).
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def k8s_label_ok(key: str, value: str) -> bool:
    prefix, _, name = key.rpartition("/")
    prefix_ok = 0 < len(prefix) <= 253 and all(
        len(p) <= 63 and _DNS_LABEL.fullmatch(p) for p in prefix.split(".")
    )
    name_ok = len(name) <= 63 and bool(_NAME.fullmatch(name))
    value_ok = value == "" or (len(value) <= 63 and bool(_NAME.fullmatch(value)))
    return prefix_ok and name_ok and value_ok and not prefix.endswith("kubernetes.io")


def nfd_worker_parse(text: str) -> dict[str, str]:
    """The local source's documented input format: `<key>[=<value>]` lines, `#` comments,
    value `true` when omitted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        out[key] = value if sep else "true"
    return out


def entries(node: FakeNode) -> list[QaicUtilEntry]:
    return [QaicUtilEntry(s.qid, s.pci_address, "Ready", SKU_TYPE_TEXT[s.sku]) for s in node.socs]


def scanner(node: FakeNode) -> Callable[[], NodeState]:
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    return lambda: inv.scan(entries(node))


def body(path: Path) -> str:
    return "".join(line + "\n" for line in path.read_text().splitlines() if line[:1] != "#")


@pytest.fixture
def features(tmp_path: Path) -> Path:
    return tmp_path / "features.d"


def test_demo_node_labels(node: FakeNode, features: Path) -> None:
    f = NfdFeatureFile(features)
    assert f.update(scanner(node)(), node.dev_root)
    assert f.path == features / "qaic"
    assert body(f.path) == DEMO
    labels = nfd_worker_parse(f.path.read_text())
    assert labels["qualcomm.com/qaic.sku.ultra"] == "true"
    for k, v in labels.items():
        assert k8s_label_ok(k, v), (k, v)
    assert f.path.stat().st_size < 64 * 1024  # nfd-worker ignores larger files
    assert oct(f.path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in features.iterdir()] == ["qaic"]  # no temporary file left behind


def test_sku_source_is_the_weakest_and_guessed_cards_count_per_soc(tmp_path: Path) -> None:
    """Issue 13: four single-SoC cards behind a server-board switch plus an Ultra card. Without
    qaic-util nothing is a card for sure, every SoC is a Standard guess and the label says so;
    firmware answers make the cards and SKUs real; an override is weaker than firmware."""
    cards = [CardSpec(Sku.STANDARD, platform_switch=0)] * 3 + [CardSpec(Sku.PRO, platform_switch=0)]
    node = FakeNode(tmp_path / "n", [*cards, CardSpec(Sku.ULTRA)], device_nodes="file")
    node.write()
    pro = next(s.pci_address for s in node.socs if s.sku is Sku.PRO)

    def labels(util: list[QaicUtilEntry] | None, overrides: dict[str, Sku]) -> dict[str, str]:
        return nfd.labels(
            Inventory(node.sysfs_root, node.dev_root, overrides).scan(util), node.dev_root
        )

    blind = labels(None, {})
    assert blind[f"{nfd.PREFIX}.sku-source"] == "topology"
    assert blind[f"{nfd.PREFIX}.cards"] == "8"  # no guessed grouping counts as one card
    assert blind[f"{nfd.PREFIX}.sku.std.socs"] == "8"
    assert f"{nfd.PREFIX}.sku.ultra" not in blind
    assert labels(None, {pro: Sku.PRO})[f"{nfd.PREFIX}.sku-source"] == "topology"

    firmware = labels(entries(node), {})
    assert firmware[f"{nfd.PREFIX}.sku-source"] == "qaic-util"
    assert firmware[f"{nfd.PREFIX}.cards"] == "5"
    assert firmware[f"{nfd.PREFIX}.sku.std.cards"] == "3"
    assert firmware[f"{nfd.PREFIX}.sku.pro.cards"] == "1"
    assert firmware[f"{nfd.PREFIX}.sku.ultra.cards"] == "1"
    assert labels(entries(node), {pro: Sku.PRO})[f"{nfd.PREFIX}.sku-source"] == "override"


def test_unchanged_content_is_not_rewritten(node: FakeNode, features: Path) -> None:
    scan = scanner(node)
    f = NfdFeatureFile(features)
    assert f.update(scan(), node.dev_root)
    before = f.path.stat()
    assert not f.update(scan(), node.dev_root)
    # Health is not a label: a SoC losing its device node changes nothing on disk.
    node.remove_device_node(node.socs[0].pci_address)
    state = scan()
    assert not all(s.healthy for s in state.socs)
    assert not f.update(state, node.dev_root)
    # Nor does a restart of the plugin (a new writer finding the same content).
    assert not NfdFeatureFile(features).update(state, node.dev_root)
    after = f.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_change_replaces_the_file_atomically(
    node: FakeNode, features: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = scanner(node)
    f = NfdFeatureFile(features)
    f.update(scan(), node.dev_root)
    old_text = f.path.read_text()
    inode = f.path.stat().st_ino
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        src_p, dst_p = Path(src), Path(dst)
        # The complete new content sits in a dot file (ignored by nfd-worker) beside the target.
        assert src_p.parent == dst_p.parent and src_p.name.startswith(".")
        renames.append((src_p.read_text(), str(dst_p)))
        real_replace(src, dst)

    std = next(s.pci_address for s in node.socs if s.sku is Sku.STANDARD)
    node.remove_soc(std)  # hot-remove the Standard card
    state = scan()
    monkeypatch.setattr(os, "replace", spy)
    assert f.update(state, node.dev_root)
    new_text = f.path.read_text()
    assert renames == [(new_text, str(f.path))]
    assert f.path.stat().st_ino != inode
    labels = nfd_worker_parse(new_text)
    assert labels["qualcomm.com/qaic.socs"] == "9" and labels["qualcomm.com/qaic.cards"] == "3"
    assert "qualcomm.com/qaic.sku.std" not in labels
    assert new_text != old_text


def test_readers_never_see_a_partial_file(node: FakeNode, features: Path) -> None:
    """A reader racing many rewrites only ever sees one of the complete versions."""
    scan = scanner(node)
    f = NfdFeatureFile(features)
    full = scan()
    fewer = NodeState(full.socs[:-1], full.discovery)
    f.update(full, node.dev_root)
    versions = {f.path.read_text()}
    f.update(fewer, node.dev_root)
    versions.add(f.path.read_text())
    assert len(versions) == 2
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(f.path.read_text())  # never missing: replace is atomic

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            assert f.update(full if i % 2 == 0 else fewer, node.dev_root)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= versions


def test_no_socs_removes_the_file(tmp_path: Path, features: Path) -> None:
    empty = FakeNode(tmp_path / "empty", [])
    empty.write()
    state = scanner(empty)()
    assert not state.socs
    f = NfdFeatureFile(features)
    assert not f.update(state, empty.dev_root)
    assert not f.path.exists()
    f.path.parent.mkdir(parents=True)
    f.path.write_text("qualcomm.com/qaic.present=true\n")  # left from an earlier run
    assert f.update(state, empty.dev_root)
    assert not f.path.exists()
    assert not f.update(state, empty.dev_root)


def test_legacy_driver_nodes(tmp_path: Path, features: Path) -> None:
    """Only the old driver's /dev/qaic_aic100_N nodes: labelled as legacy, counts only."""
    legacy = FakeNode(tmp_path / "legacy", [])
    legacy.write()
    for i in range(4):
        (legacy.dev_root / f"qaic_aic100_{i}").touch()
    (legacy.dev_root / "qaic_something_else").touch()
    f = NfdFeatureFile(features)
    assert f.update(scanner(legacy)(), legacy.dev_root)
    assert nfd_worker_parse(f.path.read_text()) == {
        "qualcomm.com/qaic.present": "true",
        "qualcomm.com/qaic.driver": "legacy",
        "qualcomm.com/qaic.socs": "4",
    }


def test_accel_wins_over_stray_legacy_nodes(node: FakeNode, features: Path) -> None:
    (node.dev_root / "qaic_aic100_0").touch()
    f = NfdFeatureFile(features)
    f.update(scanner(node)(), node.dev_root)
    assert body(f.path) == DEMO


def test_deleted_file_is_written_again(node: FakeNode, features: Path) -> None:
    scan = scanner(node)
    f = NfdFeatureFile(features)
    f.update(scan(), node.dev_root)
    f.path.unlink()
    assert f.update(scan(), node.dev_root)
    assert body(f.path) == DEMO


def test_write_failure_is_logged_not_raised(
    node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    f = NfdFeatureFile(blocker / "features.d")
    assert not f.update(scanner(node)(), node.dev_root)
    assert any(getattr(r, "event", None) == "nfd_write_failed" for r in caplog.records)


def test_file_name_must_be_seen_by_nfd(tmp_path: Path) -> None:
    for bad in (".qaic", "", "a/b"):
        with pytest.raises(ValueError):
            NfdFeatureFile(tmp_path, bad)


@pytest.mark.parametrize("sku", list(Sku))
def test_every_sku_makes_valid_labels(sku: Sku) -> None:
    for suffix, value in (("", "true"), (".socs", "4"), (".cards", "1")):
        key = f"qualcomm.com/qaic.sku.{sku.value}{suffix}"
        assert valid_label(key, value) and k8s_label_ok(key, value), key


def test_label_validator_agrees_with_the_rules() -> None:
    assert valid_label("qualcomm.com/qaic.present", "true")
    assert valid_label("qualcomm.com/qaic.x", "")
    assert not valid_label("qaic.present", "true")  # no namespace: NFD would prefix it
    assert not valid_label("kubernetes.io/qaic", "true")  # denied by nfd-master
    assert not valid_label("node.kubernetes.io/qaic", "true")
    assert not valid_label("qualcomm.com/-qaic", "true")
    assert not valid_label("qualcomm.com/" + "a" * 64, "true")
    assert not valid_label("qualcomm.com/qaic", "a" * 64)
    assert not valid_label("qualcomm.com/qaic", "two words")
    assert not valid_label("Qualcomm.com/qaic", "true")
    assert not valid_label("qualcomm.com/qaic", "true\nevil.io/x=1")  # no line injection
    assert not valid_label("qualcomm.com/qaic\n", "true")
    assert not valid_label("a..b/qaic", "true")
    with pytest.raises(ValueError, match="invalid NFD labels"):
        nfd.render({"qualcomm.com/qaic": "not ok"})
