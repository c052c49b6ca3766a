"""qaic-util: parsing its informal output, finding it, and running it without ever hanging."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaic_device_plugin.qaic.model import QaicUtilEntry, Sku
from qaic_device_plugin.qaic.qaic_util import (
    QaicUtilError,
    QaicUtilFinder,
    QaicUtilUnusable,
    candidates,
    parse_qaic_util,
    probe_qaic_util,
    query_qaic_util,
)
from qaic_device_plugin.sim.node import DEMO_CARDS, CardSpec, FakeNode

# FACTS.md section 3, with the elided lines filled in and the trailing space on Dev Link kept
SAMPLE = (
    "QID 0\n"
    "\tStatus:Ready\n"
    "\tPCI Address:0000:35:00.0\n"
    "\tPCI Info:Processing accelerators Qualcomm Device a100\n"
    "\tMax Link Speed:16GT/s\n"
    "\tDev Link:/dev/accel/accel3 \n"
    "\tHW Version:0.2.0.0\n"
    "\tDram Total:32768 MB\n"
    "\tNsp Total:16\n"
    "\tNsp Free:16\n"
    "\tNSP Defective PG Mask: 0x0\n"
    "\tSku Type:PCIe Ultra\n"
    "QID 1\n"
    "\tStatus:Error\n"
    "\tPCI Address:0000:36:00.0\n"
    "\tPCI Info:Processing accelerators Qualcomm Device a100\n"
    "\tDev Link:/dev/accel/accel1 \n"
)


def test_parse_facts_sample() -> None:
    entries = parse_qaic_util(SAMPLE)
    assert [e.qid for e in entries] == [0, 1]
    first, second = entries
    assert first.pci_address == "0000:35:00.0"
    assert first.status == "Ready" and first.ready
    assert first.sku_type == "PCIe Ultra"
    assert first.dev_link == "/dev/accel/accel3"
    assert first.extra["Dram Total"] == "32768 MB"
    assert first.extra["NSP Defective PG Mask"] == "0x0"
    assert first.extra["Max Link Speed"] == "16GT/s"
    assert "PCI Address" not in first.extra and "Status" not in first.extra
    assert second.status == "Error" and not second.ready
    assert second.sku_type is None


def test_parse_tolerates_noise() -> None:
    text = (
        "qaic-util version 1.16\r\n"
        "Number of devices: 3\n"
        "QID 4\r\n"
        "\tStatus:Ready   \r\n"
        "\tPCI Address:0000:AB:00.0\r\n"
        "\tSku Type:PCIe Pro  \r\n"
        "this line has no colon\n"
        "QID x\n"  # not a block start, and not a field of QID 4 either
        "QID 5\n"
        "\tStatus:Ready\n"  # no PCI Address: dropped
        "QID 6\n"
        "\tPCI Address:0000:ac:00.0\n"  # no Status: dropped
        "QID 7\n"
        "\tStatus:Initializing\n"
        "\tPCI Address:not-an-address\n"
        "QID 4\n"
        "\tStatus:Ready\n"
        "\tPCI Address:0000:ad:00.0\n"  # duplicate QID: the first wins
    )
    entries = parse_qaic_util(text)
    assert entries == [
        QaicUtilEntry(qid=4, pci_address="0000:ab:00.0", status="Ready", sku_type="PCIe Pro")
    ]


def test_parse_empty_and_garbage() -> None:
    assert parse_qaic_util("") == []
    assert parse_qaic_util("\x00\ufffd garbage QID\n::::\n\tStatus\n") == []


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_any_text(text: str) -> None:
    for e in parse_qaic_util(text):
        assert e.status and len(e.pci_address) >= 12


@st.composite
def outputs(draw: st.DrawFn) -> tuple[str, list[QaicUtilEntry]]:
    n = draw(st.integers(0, 6))
    buses = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n, unique=True))
    value = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20).map(
        str.strip
    )
    blocks, want = [], []
    for qid, bus in enumerate(buses):
        status = draw(st.sampled_from(["Ready", "Error", "Initializing"]))
        sku = draw(st.sampled_from(["PCIe", "PCIe Ultra", "M.2", "Invalid"]))
        extra = draw(st.dictionaries(st.sampled_from(["HW Version", "Nsp Free", "Foo"]), value))
        pci = f"0000:{bus:02x}:00.0"
        lines = [f"QID {qid}", f"\tStatus:{status}", f"\tPCI Address:{pci}"]
        lines += [f"\t{k}:{v}" for k, v in extra.items()]
        if status == "Ready":
            lines.append(f"\tSku Type:{sku}   ")
        blocks.append("\n".join(lines))
        want.append(
            QaicUtilEntry(qid, pci, status, sku if status == "Ready" else None, None, dict(extra))
        )
    return "\n".join(blocks) + "\n", want


@settings(max_examples=200, deadline=None)
@given(outputs())
def test_parse_roundtrip(case: tuple[str, list[QaicUtilEntry]]) -> None:
    text, want = case
    assert parse_qaic_util(text) == want


# ----- finding a usable qaic-util ----------------------------------------------------------


def make_exe(path: Path, body: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


LOADER_FAILURE = (
    '#!/bin/sh\necho "$0: error while loading shared libraries: libpci.so.3: cannot open '
    'shared object file: No such file or directory" >&2\nexit 127\n'
)


def test_candidates_configured_then_path_then_default(tmp_path: Path) -> None:
    on_path = make_exe(tmp_path / "bin" / "qaic-util")
    default = str(tmp_path / "opt" / "qaic-util")
    search = str(on_path.parent)
    assert candidates("/x/q", search, default) == ["/x/q", str(on_path), default]
    assert candidates(None, str(tmp_path / "empty"), default) == [default]
    assert candidates(default, str(tmp_path / "empty"), default) == [default]  # no duplicates


async def test_probe_says_why_each_candidate_is_unusable(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    not_exe = make_exe(tmp_path / "a" / "qaic-util", mode=0o644)
    no_lib = make_exe(tmp_path / "b" / "qaic-util", LOADER_FAILURE)
    bad_format = tmp_path / "c" / "qaic-util"
    bad_format.parent.mkdir()
    bad_format.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)  # not loadable here
    bad_format.chmod(0o755)
    paths = [missing, str(not_exe), str(tmp_path), str(no_lib), str(bad_format)]
    probe = await probe_qaic_util(paths, 5.0)
    assert probe.path is None
    why = dict(probe.tried)
    assert list(why) == paths
    assert why[missing] == "not found"
    assert why[str(not_exe)] == "not executable"
    assert "not a regular file" in why[str(tmp_path)]
    assert "exited 127 before running" in why[str(no_lib)] and "libpci.so.3" in why[str(no_lib)]
    assert why[str(bad_format)].startswith("cannot execute: Exec format error")


async def test_probe_takes_the_first_that_runs(tmp_path: Path) -> None:
    no_lib = make_exe(tmp_path / "b" / "qaic-util", LOADER_FAILURE)
    works = make_exe(tmp_path / "w" / "qaic-util", f"#!/bin/sh\ncat <<'E'\n{SAMPLE}E\n")
    probe = await probe_qaic_util([str(no_lib), str(works)], 5.0)
    assert probe.path == str(works)
    assert [e.pci_address for e in probe.entries or []] == ["0000:35:00.0", "0000:36:00.0"]
    assert [p for p, _ in probe.tried] == [str(no_lib)]


async def test_probe_a_tool_that_starts_but_fails_is_still_the_tool(tmp_path: Path) -> None:
    crashes = make_exe(tmp_path / "qaic-util", "#!/bin/sh\necho boom >&2\nexit 139\n")
    probe = await probe_qaic_util([str(crashes)], 5.0)
    assert probe.path == str(crashes) and probe.entries is None
    assert probe.error is not None and "exited 139" in probe.error


async def test_finder_warns_once_and_says_when_qaic_util_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configured = tmp_path / "tools" / "qaic-util"
    finder = QaicUtilFinder(
        str(configured), search_path=str(tmp_path / "empty"), default=str(tmp_path / "opt")
    )
    caplog.set_level(logging.INFO, logger="qaic_device_plugin.qaic.qaic_util")

    def events(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == name]

    for _ in range(3):  # every health poll looks again, and says nothing new
        assert (await finder.find(5.0)).path is None
    (warning,) = events("qaic_util_unusable")
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["tried"] == [
        {"path": str(configured), "reason": "not found"},
        {"path": str(tmp_path / "opt"), "reason": "not found"},
    ]
    assert "SKUs are guesses" in warning.getMessage()
    assert "Status health signal and PreStart Status check are off" in warning.getMessage()

    make_exe(configured)
    assert (await finder.find(5.0)).path == str(configured)
    assert len(events("qaic_util_found")) == 1
    configured.unlink()  # lost again: that is news, said once more
    assert (await finder.find(5.0)).path is None
    assert (await finder.find(5.0)).path is None
    assert len(events("qaic_util_unusable")) == 2


# ----- query_qaic_util against the fake tool, as a real subprocess --------------------------


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    n = FakeNode(tmp_path / "node", list(DEMO_CARDS), device_nodes="file")
    n.write()
    return n


def running(marker: str) -> list[int]:
    """Pids whose command line mentions `marker` (our own fake tool, found by its unique path)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(pid))
    return pids


async def wait_gone(marker: str, within: float = 15.0) -> list[int]:
    for _ in range(int(within / 0.05)):
        if not running(marker):
            return []
        await asyncio.sleep(0.05)
    return running(marker)


async def test_query_fake_node(node: FakeNode) -> None:
    entries = await query_qaic_util(str(node.qaic_util_path), 20)
    assert [(e.qid, e.pci_address) for e in entries] == [(s.qid, s.pci_address) for s in node.socs]
    assert all(e.ready for e in entries)
    assert [e.dev_link for e in entries] == [f"/dev/accel/accel{s.accel_index}" for s in node.socs]
    skus = {"PCIe Ultra": Sku.ULTRA, "PCIe": Sku.STANDARD, "PCIe Pro": Sku.PRO}
    assert [skus[e.sku_type or ""] for e in entries] == [s.sku for s in node.socs]


async def test_query_sees_status_changes(node: FakeNode) -> None:
    pci = node.socs[0].pci_address
    node.set_status(pci, "Initializing")
    entries = await query_qaic_util(str(node.qaic_util_path), 20)
    first = entries[0]
    assert (first.pci_address, first.status, first.sku_type) == (pci, "Initializing", None)


async def test_query_hang_is_killed(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QAIC_UTIL_MODE", "hang")
    start = time.monotonic()
    with pytest.raises(QaicUtilError, match=r"did not finish within 0\.5s"):
        await query_qaic_util(str(node.qaic_util_path), 0.5)
    assert time.monotonic() - start < 5
    assert await wait_gone(str(node.qaic_util_path)) == []


async def test_query_hang_via_state_file(node: FakeNode) -> None:
    node.set_qaic_util_mode("hang")
    with pytest.raises(QaicUtilError, match="did not finish"):
        await query_qaic_util(str(node.qaic_util_path), 0.3)
    node.set_qaic_util_mode(None)
    assert len(await query_qaic_util(str(node.qaic_util_path), 20)) == 10


async def test_query_cancelled_kills_tool(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QAIC_UTIL_MODE", "hang")
    marker = str(node.qaic_util_path)
    task = asyncio.create_task(query_qaic_util(marker, 60))
    for _ in range(200):
        if running(marker):
            break
        await asyncio.sleep(0.05)
    assert running(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(marker) == []


async def test_query_garbage(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QAIC_UTIL_MODE", "garbage")
    with pytest.raises(QaicUtilError, match="no parseable QID block"):
        await query_qaic_util(str(node.qaic_util_path), 20)


async def test_query_crash(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QAIC_UTIL_MODE", "crash")
    with pytest.raises(QaicUtilError, match=r"exited 139: Segmentation fault"):
        await query_qaic_util(str(node.qaic_util_path), 20)


async def test_query_killed_by_signal(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "qaic-util", "#!/bin/sh\nkill -9 $$\n")
    with pytest.raises(QaicUtilError, match="killed by signal 9"):
        await query_qaic_util(str(exe), 20)


async def test_query_missing_or_not_executable(tmp_path: Path) -> None:
    with pytest.raises(QaicUtilUnusable, match="cannot execute: No such file"):
        await query_qaic_util(str(tmp_path / "nope"), 5)
    exe = make_exe(tmp_path / "qaic-util", mode=0o644)
    assert not os.stat(exe).st_mode & stat.S_IXUSR
    with pytest.raises(QaicUtilUnusable, match="cannot execute: Permission denied"):
        await query_qaic_util(str(exe), 5)


async def test_query_missing_shared_library_or_interpreter_is_unusable(tmp_path: Path) -> None:
    no_lib = make_exe(tmp_path / "a" / "qaic-util", LOADER_FAILURE)
    with pytest.raises(QaicUtilUnusable, match=r"libpci\.so\.3: cannot open shared object"):
        await query_qaic_util(str(no_lib), 5)
    no_python = make_exe(tmp_path / "b" / "qaic-util", "#!/nonexistent/python3\nprint(1)\n")
    with pytest.raises(QaicUtilUnusable, match=r"cannot execute: No such file .*dynamic loader"):
        await query_qaic_util(str(no_python), 5)
    # the fake node's qaic-util emulates the loader failure too (for the process tests)
    node = FakeNode(tmp_path / "node", list(DEMO_CARDS), device_nodes="file")
    node.write()
    node.set_qaic_util_mode("nolib")
    with pytest.raises(QaicUtilUnusable, match="exited 127 before running"):
        await query_qaic_util(str(node.qaic_util_path), 5)


async def test_query_no_devices(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "qaic-util", "#!/bin/sh\nexit 0\n")
    assert await query_qaic_util(str(exe), 5) == []


async def test_query_partial_blocks_are_kept(tmp_path: Path) -> None:
    body = "#!/bin/sh\nprintf 'QID 0\\n\\tStatus:Ready\\nQID 1\\n\\tStatus:Error\\n"
    body += "\\tPCI Address:0000:02:00.0\\n'\n"
    exe = make_exe(tmp_path / "qaic-util", body)
    entries = await query_qaic_util(str(exe), 5)
    assert [(e.qid, e.status) for e in entries] == [(1, "Error")]


async def test_query_empty_node(tmp_path: Path) -> None:
    n = FakeNode(tmp_path / "n", [CardSpec(Sku.STANDARD)], device_nodes="file")
    n.write()
    n.remove_soc(n.socs[0].pci_address)
    assert await query_qaic_util(str(n.qaic_util_path), 20) == []
