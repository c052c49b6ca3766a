"""Each health signal on its own (on the fake node's kernel-shaped sysfs), the RAS cool-down
with an injected clock, and the inventory combining them: every signal flips and recovers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from asyncinotify import Inotify, Mask
from grpc import aio
from hypothesis import given
from hypothesis import strategies as st

from qaic_device_plugin.qaic.health import (
    DbcState,
    Finding,
    RasCounts,
    RasTracker,
    Signal,
    Unreadable,
    check_dbc_states,
    check_device_node,
    check_driver,
    check_qaic_util,
    check_sysfs,
    parse_dbc_state,
    parse_ras_count,
    read_ras_counts,
)
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import QaicUtilEntry, Soc
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import DBCS_PER_SOC, CardSpec, FakeNode, Sku
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, **kw: object) -> FakeNode:
    node = FakeNode(
        tmp_path / "node",
        [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD, numa_node=1)],
        device_nodes="file",
        **kw,  # type: ignore[arg-type]
    )
    node.write()
    return node


def soc_of(node: FakeNode, i: int = 0) -> Soc:
    s = node.socs[i]
    return Soc(s.pci_address, s.accel_index, 0xA100, None, s.card_id, s.qid)


# -- device node -----------------------------------------------------------------------------


def test_device_node(node: FakeNode) -> None:
    soc = soc_of(node)
    assert check_device_node(node.dev_root, soc) is None
    node.remove_device_node(soc.pci_address)
    f = check_device_node(node.dev_root, soc)
    assert isinstance(f, Finding) and f.signal is Signal.DEVICE_NODE
    node.restore_device_node(soc.pci_address)
    assert check_device_node(node.dev_root, soc) is None


# -- sysfs: driver binding ---------------------------------------------------------------------


def test_driver_bound_unbound_gone_and_foreign(node: FakeNode) -> None:
    soc = soc_of(node)
    pci = soc.pci_address
    assert check_driver(node.sysfs_root, pci) is None
    assert check_sysfs(node.sysfs_root, soc, accel_present=True) is None
    node.unbind_driver(pci)
    f = check_driver(node.sysfs_root, pci)
    assert isinstance(f, Finding) and "no driver bound" in f.detail
    # the accel entry left too: the more specific reason wins
    s = check_sysfs(node.sysfs_root, soc, accel_present=False)
    assert isinstance(s, Finding) and "no driver bound" in s.detail
    # bound to another driver (vfio-pci for passthrough)
    link = node.function_dir(pci) / "driver"
    vfio = node.sysfs_root / "bus/pci/drivers/vfio-pci"
    vfio.mkdir(parents=True)
    link.symlink_to(os.path.relpath(vfio, link.parent))
    f = check_driver(node.sysfs_root, pci)
    assert isinstance(f, Finding) and "vfio-pci" in f.detail
    link.unlink()
    node.bind_driver(pci)
    assert check_driver(node.sysfs_root, pci) is None
    node.remove_soc(pci)
    f = check_driver(node.sysfs_root, pci)
    assert isinstance(f, Finding) and "gone" in f.detail


def test_accel_left_while_bound_is_a_reset(node: FakeNode) -> None:
    soc = soc_of(node)
    f = check_sysfs(node.sysfs_root, soc, accel_present=False)
    assert isinstance(f, Finding) and f.signal is Signal.SYSFS and "left sysfs" in f.detail


def test_driver_link_unreadable(node: FakeNode, tmp_path: Path) -> None:
    pci = node.socs[0].pci_address
    link = node.function_dir(pci) / "driver"
    link.unlink()
    link.mkdir()  # readlink on a directory: EINVAL
    u = check_driver(node.sysfs_root, pci)
    assert isinstance(u, Unreadable) and u.signal is Signal.SYSFS


# -- dbc state -----------------------------------------------------------------------------------


def test_dbc_files_are_kernel_shaped(node: FakeNode) -> None:
    soc = node.socs[0]
    accel = node.sysfs_root / "class/accel" / f"accel{soc.accel_index}"
    names = sorted(p.name for p in accel.iterdir() if p.name.endswith("_state"))
    assert len(names) == DBCS_PER_SOC
    assert (accel / "dbc15_state").read_text() == "0\n"
    npu = node.sysfs_root / "class/accel/accel0"
    assert not list(npu.glob("dbc*_state"))  # another driver's device has none


@pytest.mark.parametrize("state", list(DbcState))
def test_dbc_state_each_value(node: FakeNode, state: DbcState) -> None:
    soc = soc_of(node)
    node.set_dbc_state(soc.pci_address, 11, int(state))
    got = check_dbc_states(node.sysfs_root, soc)
    if state in (DbcState.BEFORE_SHUTDOWN, DbcState.AFTER_SHUTDOWN, DbcState.BEFORE_POWER_UP):
        assert isinstance(got, Finding) and got.signal is Signal.DBC_STATE
        assert f"dbc11 {state.name.lower().replace('_', '-')}" in got.detail
    else:
        assert got is None


def test_dbc_restart_flips_and_recovers(node: FakeNode) -> None:
    soc = soc_of(node)
    for state, bad in ((1, False), (2, True), (3, True), (4, True), (5, False), (0, False)):
        node.set_dbc_state(soc.pci_address, 0, state)
        assert isinstance(check_dbc_states(node.sysfs_root, soc), Finding) is bad, state


@pytest.mark.parametrize("text", ["x", "", "6", "-1", "2.0", "\xff"])
def test_dbc_garbage_is_unreadable_not_unhealthy(node: FakeNode, text: str) -> None:
    soc = soc_of(node)
    node.set_dbc_state(soc.pci_address, 3, text)
    got = check_dbc_states(node.sysfs_root, soc)
    assert isinstance(got, Unreadable) and "dbc3_state" in got.detail
    # ... but a real restart elsewhere on the SoC still counts
    node.set_dbc_state(soc.pci_address, 4, 2)
    assert isinstance(check_dbc_states(node.sysfs_root, soc), Finding)


def test_dbc_absent_on_older_kernels(tmp_path: Path) -> None:
    node = make(tmp_path, dbcs=0)
    soc = soc_of(node)
    assert check_dbc_states(node.sysfs_root, soc) is None
    node.remove_soc(soc.pci_address)  # accel dir gone: the sysfs signal speaks, not this one
    assert check_dbc_states(node.sysfs_root, soc) is None


def test_dbc_unreadable_file(node: FakeNode) -> None:
    soc = soc_of(node)
    path = node.sysfs_root / "class/accel" / soc.accel_name / "dbc2_state"
    path.unlink()
    path.mkdir()  # read() of a directory: EISDIR
    assert isinstance(check_dbc_states(node.sysfs_root, soc), Unreadable)


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_parse_dbc_state(n: int) -> None:
    if 0 <= n <= 5:
        assert parse_dbc_state(f"{n}\n") == n
    else:
        with pytest.raises(ValueError):
            parse_dbc_state(str(n))


# -- RAS -------------------------------------------------------------------------------------------


def test_ras_files_on_the_pci_function(node: FakeNode) -> None:
    pci = node.socs[0].pci_address
    fn = node.function_dir(pci)
    assert {p.name for p in fn.iterdir() if p.name.endswith("_count")} == {
        "ce_count",
        "ue_count",
        "ue_nonfatal_count",
    }
    assert read_ras_counts(node.sysfs_root, pci) == RasCounts(0, 0, 0)
    assert node.bump_ue_count(pci) == 1
    node.bump_ras_count(pci, "ce_count", 5)
    assert read_ras_counts(node.sysfs_root, pci) == RasCounts(5, 1, 0)
    node.unbind_driver(pci)  # the RAS group goes with the driver
    assert read_ras_counts(node.sysfs_root, pci) is None
    node.bind_driver(pci)  # a new probe counts from 0
    assert read_ras_counts(node.sysfs_root, pci) == RasCounts(0, 0, 0)


def test_ras_absent_and_garbage(tmp_path: Path) -> None:
    node = make(tmp_path, ras=False)
    pci = node.socs[0].pci_address
    assert read_ras_counts(node.sysfs_root, pci) is None
    node.set_ras_file(pci, "ue_count", "lots\n")
    u = read_ras_counts(node.sysfs_root, pci)
    assert isinstance(u, Unreadable) and u.signal is Signal.RAS
    node.set_ras_file(pci, "ue_count", "-1\n")  # u32 printed with %d, saturated
    assert read_ras_counts(node.sysfs_root, pci) == RasCounts(None, 2**32 - 1, None)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_parse_ras_count_u32_as_printed(n: int) -> None:
    printed = n if n < 2**31 else n - 2**32  # what "%d" of a u32 shows
    assert parse_ras_count(f"{printed}\n") == n


def test_ras_tracker_baseline_cooldown_and_recovery() -> None:
    clock = Clock()
    t = RasTracker(300, clock)
    pci = "0000:35:00.0"
    assert t.observe(pci, RasCounts(0, 7, 0)) is None  # history: baseline only
    clock.now += 10
    assert t.observe(pci, RasCounts(0, 7, 0)) is None
    assert t.next_expiry() is None
    f = t.observe(pci, RasCounts(0, 8, 0))
    assert isinstance(f, Finding) and f.signal is Signal.RAS and "ue_count 8" in f.detail
    assert t.next_expiry() == clock.now + 300
    clock.now += 299
    assert t.observe(pci, RasCounts(0, 8, 0)) == f  # stable detail: no churn in snapshots
    clock.now += 1
    assert t.observe(pci, RasCounts(0, 8, 0)) is None  # cool-down over: Healthy again
    assert t.next_expiry() is None


def test_ras_tracker_new_error_restarts_cooldown() -> None:
    clock = Clock()
    t = RasTracker(60, clock)
    t.observe("a", RasCounts(ue=0))
    assert t.observe("a", RasCounts(ue=1)) is not None
    clock.now += 50
    assert t.observe("a", RasCounts(ue=2)) is not None
    clock.now += 50  # 100 s after the first, 50 after the last
    assert t.observe("a", RasCounts(ue=2)) is not None
    clock.now += 10
    assert t.observe("a", RasCounts(ue=2)) is None


def test_ras_tracker_files_absent_mid_reset_keep_cooldown_and_baseline() -> None:
    clock = Clock()
    t = RasTracker(60, clock)
    t.observe("a", RasCounts(0, 0, 0))
    assert t.observe("a", RasCounts(0, 1, 0)) is not None
    clock.now += 5
    assert t.observe("a", None) is not None  # RAS group removed during the reset
    clock.now += 5
    assert t.observe("a", RasCounts(0, 1, 0)) is not None  # back, same count: no new error
    clock.now += 60
    assert t.observe("a", None) is None


def test_ras_tracker_counter_reset_is_a_new_baseline() -> None:
    clock = Clock()
    t = RasTracker(60, clock)
    t.observe("a", RasCounts(0, 5, 0))
    assert t.observe("a", RasCounts(0, 0, 0)) is None  # driver re-probed
    assert t.observe("a", RasCounts(0, 1, 0)) is not None  # a real error after that


def test_ras_tracker_nonfatal_and_correctable_only_log(caplog: pytest.LogCaptureFixture) -> None:
    t = RasTracker(60, Clock())
    t.observe("a", RasCounts(0, 0, 0))
    with caplog.at_level(logging.DEBUG):
        assert t.observe("a", RasCounts(3, 0, 2)) is None
    counters = {getattr(r, "counter", None) for r in caplog.records}
    assert {"ce_count", "ue_nonfatal_count"} <= counters


def test_ras_tracker_is_per_soc_and_forgets() -> None:
    clock = Clock()
    t = RasTracker(60, clock)
    t.observe("a", RasCounts(ue=0))
    t.observe("b", RasCounts(ue=0))
    assert t.observe("a", RasCounts(ue=1)) is not None
    assert t.observe("b", RasCounts(ue=0)) is None
    t.forget("a")
    assert t.observe("a", RasCounts(ue=9)) is None  # a new SoC at that address: baseline


def test_ras_tracker_unseen_soc_without_files() -> None:
    assert RasTracker(60, Clock()).observe("a", None) is None


# -- qaic-util -------------------------------------------------------------------------------------


def test_qaic_util_status() -> None:
    soc = Soc("0000:35:00.0", 3, 0xA100, None, "0000:35:00.0", 0)
    ready = QaicUtilEntry(0, soc.pci_address, "Ready")
    assert check_qaic_util(soc, None) is None  # absent or failed: no evidence
    assert check_qaic_util(soc, {}) is None  # not listed: no evidence
    assert check_qaic_util(soc, {soc.pci_address: ready}) is None
    for status in ("Error", "Initializing", "whatever"):
        f = check_qaic_util(soc, {soc.pci_address: QaicUtilEntry(0, soc.pci_address, status)})
        assert isinstance(f, Finding) and f.signal is Signal.QAIC_UTIL and status in f.detail


# -- the inventory combines them -------------------------------------------------------------------


def signals(
    node: FakeNode, inv: Inventory, pci: str, util: list[QaicUtilEntry] | None = None
) -> set[Signal]:
    state = inv.scan(util).by_pci()[pci]
    return {f.signal for f in state.findings}


def test_inventory_each_signal_flips_and_recovers(node: FakeNode) -> None:
    clock = Clock()
    inv = Inventory(node.sysfs_root, node.dev_root, {}, ue_cooldown_seconds=30, clock=clock)
    pci = node.socs[1].pci_address
    assert signals(node, inv, pci) == set()

    node.set_dbc_state(pci, 5, 3)
    assert signals(node, inv, pci) == {Signal.DBC_STATE}
    node.set_dbc_state(pci, 5, 5)
    assert signals(node, inv, pci) == set()

    node.bump_ue_count(pci)
    assert signals(node, inv, pci) == {Signal.RAS}
    clock.now += 30
    assert signals(node, inv, pci) == set()

    util = [QaicUtilEntry(s.qid, s.pci_address, "Ready") for s in node.socs]
    assert signals(node, inv, pci, util) == set()
    util[1] = QaicUtilEntry(1, pci, "Error")
    assert signals(node, inv, pci, util) == {Signal.QAIC_UTIL}
    assert signals(node, inv, pci, None) == set()  # qaic-util failing: no evidence

    node.unbind_driver(pci)
    state = inv.scan(None).by_pci()[pci]
    assert {f.signal for f in state.findings} == {Signal.SYSFS, Signal.DEVICE_NODE}
    assert any("no driver bound" in f.detail for f in state.findings)
    node.bind_driver(pci)
    assert signals(node, inv, pci) == set()
    assert inv.scan(None).by_pci()[pci].soc.accel_index == node.soc(pci).accel_index


def test_inventory_unreadable_is_counted_not_unhealthy(node: FakeNode) -> None:
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    pci = node.socs[0].pci_address
    inv.scan(None)
    node.set_dbc_state(pci, 0, "junk")
    node.set_ras_file(pci, "ue_count", "junk")
    state = inv.scan(None)
    assert state.by_pci()[pci].healthy
    assert {u.signal for u in state.unreadable} == {Signal.DBC_STATE, Signal.RAS}


def test_inventory_ras_baseline_survives_unreadable_reads(node: FakeNode) -> None:
    clock = Clock()
    inv = Inventory(node.sysfs_root, node.dev_root, {}, ue_cooldown_seconds=30, clock=clock)
    pci = node.socs[0].pci_address
    inv.scan(None)
    node.set_ras_file(pci, "ue_count", "junk")
    assert inv.scan(None).by_pci()[pci].healthy
    node.set_ras_file(pci, "ue_count", "1\n")
    assert not inv.scan(None).by_pci()[pci].healthy  # 0 -> 1 is still an error


def test_inventory_drops_removed_soc_and_its_ras_memory(node: FakeNode) -> None:
    clock = Clock()
    inv = Inventory(node.sysfs_root, node.dev_root, {}, ue_cooldown_seconds=30, clock=clock)
    pci = node.socs[0].pci_address
    inv.scan(None)
    node.bump_ue_count(pci)
    assert not inv.scan(None).by_pci()[pci].healthy
    node.remove_soc(pci)
    assert pci not in inv.scan(None).by_pci()
    assert inv.ras.next_expiry() is None


# -- through the real process and the kubelet simulator -------------------------------------------

QAIC = "qualcomm.com/qaic"


async def wait_logged(plugin: PluginProcess, event: str, count: int = 1) -> None:
    """Await the plugin logging `event` `count` times, by watching its log file (no polling)."""
    with Inotify() as inotify:
        inotify.add_watch(plugin.log_path, Mask.MODIFY)
        async with asyncio.timeout(10):
            while len(plugin.events(event)) < count:
                await inotify.get()


FAST = {"QAIC_RESYNC_SECONDS": "0.2"}  # sysfs attributes change without inotify events


async def test_process_dbc_restart_flips_and_recovers(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(**FAST)
    await kubelet.wait_devices(QAIC, healthy=10)
    pci = node.socs[4].pci_address
    node.set_dbc_state(pci, 9, 3)  # after-shutdown
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    node.set_dbc_state(pci, 9, 5)  # after-power-up
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
    flips = [e for e in plugin.events("health") if e["pci"] == pci]
    assert [e["healthy"] for e in flips] == [True, False, True]
    assert "dbc-state" in flips[1]["reasons"][0]


async def test_process_ras_cooldown_then_recovery(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    pci = node.socs[0].pci_address
    node.bump_ue_count(pci, 3)  # errors before we started: history, not a verdict
    await start_plugin(QAIC_UE_COOLDOWN_SECONDS="1.5", **FAST)
    await kubelet.wait_devices(QAIC, healthy=10)
    node.bump_ue_count(pci)
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    node.bump_ras_count(pci, "ue_nonfatal_count")  # non-fatal: logged, no verdict
    await kubelet.wait_devices(QAIC, healthy=10, timeout=6)  # cool-down over


async def test_process_recovers_when_the_cooldown_ends_without_a_resync(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """The rescan wakes at the cool-down's end, not at the next periodic resync."""
    pci = node.socs[0].pci_address
    await start_plugin(
        QAIC_UE_COOLDOWN_SECONDS="1", QAIC_RESYNC_SECONDS="3600", QAIC_UDEV_ENABLED="false"
    )
    await kubelet.wait_devices(QAIC, healthy=10)
    node.bump_ue_count(pci)
    node.remove_device_node(pci)  # an inotify event makes the plugin read ue_count now
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    node.restore_device_node(pci)  # device back, RAS cool-down still running
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)


async def test_process_qaic_util_status_flips_and_failures_are_no_evidence(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(QAIC_HEALTH_POLL_SECONDS="0.3", QAIC_UTIL_TIMEOUT_SECONDS="1")
    await kubelet.wait_devices(QAIC, healthy=10)
    pci = node.socs[7].pci_address
    node.set_status(pci, "Error")
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    node.set_status(pci, "Ready")
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
    # qaic-util crashing or hanging says nothing about the SoCs: all stay Healthy
    node.set_qaic_util_mode("crash")
    await wait_logged(plugin, "qaic_util_failed")  # the crash: Status evidence dropped
    node.set_status(pci, "Error")  # what a working qaic-util would now report
    node.set_qaic_util_mode("hang")
    await wait_logged(plugin, "qaic_util_failed", count=2)  # killed after 1 s
    assert "within" in plugin.events("qaic_util_failed")[-1]["error"]
    assert len(kubelet.resources[QAIC].healthy) == 10  # no evidence is not a verdict
    node.set_qaic_util_mode(None)
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)


async def test_process_driver_unbind_and_rebind(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(QAIC_HEALTH_POLL_SECONDS="3600", QAIC_RESYNC_SECONDS="3600")
    await kubelet.wait_devices(QAIC, healthy=10)
    pci = node.socs[5].pci_address
    node.unbind_driver(pci)  # inotify: its /dev node goes
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    node.bind_driver(pci)  # back, with an early qaic-util poll confirming it
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
    bad = [e for e in plugin.events("health") if e["pci"] == pci and not e["healthy"]]
    # "left sysfs" or, if the scan came after the driver link went, "no driver bound"
    assert any(r.startswith("sysfs: ") for r in bad[0]["reasons"])


async def test_process_prestart_refuses_a_soc_that_went_bad(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """Nothing but PreStartContainer looks: no poll, no resync for an hour, no udev here."""
    await start_plugin(
        QAIC_PRESTART_CHECK="true", QAIC_HEALTH_POLL_SECONDS="3600", QAIC_RESYNC_SECONDS="3600"
    )
    await kubelet.wait_devices(QAIC, healthy=10)
    assert kubelet.resources[QAIC].options.pre_start_required
    a, b, c = (s.pci_address for s in node.socs[:3])
    await kubelet.pre_start(QAIC, [a, b])
    node.set_status(b, "Error")  # qaic-util Status, fetched at call time
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.pre_start(QAIC, [a, b])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "Error" in (err.value.details() or "")
    node.set_dbc_state(c, 0, 2)  # a sysfs signal, re-read at call time
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.pre_start(QAIC, [c])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await kubelet.pre_start(QAIC, [a])
    node.set_status(b, "Ready")
    node.set_dbc_state(c, 0, 1)
    await kubelet.pre_start(QAIC, [a, b, c])
    await kubelet.wait_devices(QAIC, healthy=10)


async def test_process_prestart_with_hung_qaic_util_is_bounded_and_no_evidence(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin(
        QAIC_PRESTART_CHECK="true", QAIC_HEALTH_POLL_SECONDS="3600", QAIC_UTIL_TIMEOUT_SECONDS="1"
    )
    await kubelet.wait_devices(QAIC, healthy=10)
    node.set_qaic_util_mode("hang")
    t0 = time.monotonic()
    await kubelet.pre_start(QAIC, [node.socs[0].pci_address])
    assert time.monotonic() - t0 < 5


async def test_process_udev_availability_is_logged_once(
    kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """udev source without /run/udev: one warning, and the plugin works on inotify + resync;
    kernel source: a real netlink monitor; disabled: said so."""
    for env, expected in (
        ({}, "udev_started" if os.path.isdir("/run/udev") else "udev_unavailable"),
        ({"QAIC_UDEV_SOURCE": "kernel"}, "udev_started"),
        ({"QAIC_UDEV_ENABLED": "false"}, "udev_off"),
    ):
        plugin = await start_plugin(**env)
        await wait_logged(plugin, expected)
        await kubelet.wait_devices(QAIC, healthy=10)
        assert plugin.returncode is None
        others = {"udev_started", "udev_unavailable", "udev_off"} - {expected}
        assert not any(plugin.events(e) for e in others)
        if expected == "udev_unavailable":
            assert "/run/udev" in plugin.events(expected)[0]["reason"]
        assert await plugin.stop() == 0


async def test_process_exits_nonzero_when_the_refresher_dies(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, plugin_dir: Path
) -> None:
    """The health machinery dying must end the process (exit 1, so the DaemonSet restarts it),
    never leave it advertising devices nobody watches. Provoked from outside: a new SKU's
    socket path is squatted by a directory, so serving it raises inside the refresher."""
    (pro,) = [s for s in node.socs if s.sku is Sku.PRO]
    node.remove_soc(pro.pci_address)
    (plugin_dir / "qualcomm.com_qaic-pro.sock").mkdir()
    plugin = await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="1")
    await kubelet.wait_devices("qualcomm.com/qaic-ultra", healthy=8)
    node.add_card(CardSpec(Sku.PRO, numa_node=1))
    assert await plugin.wait(timeout=15) == 1
    (died,) = plugin.events("loop_died")
    assert died["loop"] == "refresher"
