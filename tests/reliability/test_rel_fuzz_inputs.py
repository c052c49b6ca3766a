"""Fuzzed sysfs and qaic-util output against the running plugin process (hypothesis).

sysfs: truncated files, garbage bytes and numbers, missing entries and links, dangling links,
symlink loops, FIFOs and permission errors (the plugin runs without the capabilities that let
root ignore file modes) are written into the fake node's tree while the plugin serves it.
qaic-util: arbitrary text and exit codes from a stand-in, and the fake's hang/garbage/crash.

After each example, and a PreStartContainer that waits for a scan started after the damage
(QAIC_PRESTART_CHECK): the process is alive, it advertises no SoC the node does not have,
and every SoC it stopped offering healthy is explained in its log (`sysfs_skipped`, a
`health` change, `soc_removed`); a qaic-util run that said nothing usable is logged as
`qaic_util_failed`. Then the tree is restored and the plugin must offer every SoC again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_harness import FULL, Report, until

from qaic_device_plugin.qaic.qaic_util import parse_qaic_util
from qaic_device_plugin.sim import process as sim_process
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = pytest.mark.reliability

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
SKU_COUNTS = {"qualcomm.com/qaic-ultra": 8, "qualcomm.com/qaic-std": 1, "qualcomm.com/qaic-pro": 1}


def fuzz_settings(short: int, full: int) -> settings:
    return settings(
        max_examples=full if FULL else short,
        deadline=None,
        derandomize=not FULL,  # CI runs the same examples every time; the full run explores
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# Refusals a PreStart barrier may get: the SoC went bad or unknown; the resource was dropped.
BARRIER_OK = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
}


@pytest.fixture
def no_dac_override(monkeypatch: pytest.MonkeyPatch) -> bool:
    """Start the plugin without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH so that, as root, a
    mode-000 file is unreadable to it as it would be to any process. Non-root needs nothing."""
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    original = sim_process.plugin_command
    monkeypatch.setattr(sim_process, "plugin_command", lambda: [*prefix, *original()])
    return True


async def run_hypothesis(
    config: settings,
    strategy: st.SearchStrategy[Any],
    body: Callable[[Any], Coroutine[Any, Any, None]],
) -> None:
    """Drive `body` (a coroutine on this loop) with hypothesis examples. Hypothesis calls
    synchronous functions, so its engine runs in a worker thread and hands every example to
    this loop, which stays free to serve the simulator meanwhile."""
    loop = asyncio.get_running_loop()

    @config
    @given(strategy)
    def run(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(body(value), loop).result()

    await asyncio.to_thread(run)


# -- the log, read incrementally -------------------------------------------------------------


class LogTail:
    def __init__(self, plugin: PluginProcess) -> None:
        self.path = plugin.log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


async def barrier(kubelet: KubeletSim, resource: str) -> str:
    """PreStartContainer with the plugin's pre-start check: returns once a scan that started
    after this call has been published. The outcome's name."""
    view = kubelet.resources.get(resource)
    if view is None or not view.connected:
        return "no_resource"
    try:
        await kubelet.pre_start(resource, ["0000:00:00.0"])
    except aio.AioRpcError as e:
        assert e.code() in BARRIER_OK, f"PreStartContainer: {e.code().name}: {e.details()}"
        return e.code().name.lower()
    except (aio.UsageError, asyncio.CancelledError):
        return "no_resource"
    return "ok"


def all_healthy(kubelet: KubeletSim, resource: str, n: int) -> bool:
    v = kubelet.resources.get(resource)
    return v is not None and v.connected and len(v.healthy) == n and not v.unhealthy


def advertised(kubelet: KubeletSim) -> dict[str, set[str]]:
    """Device IDs per resource on every stream kubelet still has open."""
    return {r: set(v.health) for r, v in kubelet.resources.items() if v.connected}


# -- sysfs damage ----------------------------------------------------------------------------


def entries(root: Path) -> list[Path]:
    out: list[Path] = []
    for d, dirs, files in os.walk(root):
        out += [Path(d, n) for n in sorted(dirs) + sorted(files)]
    return sorted(out)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def damage(op: str, path: Path, data: bytes) -> None:
    if not os.path.lexists(path):
        return  # an earlier op removed it (or its parent)
    regular = path.is_file() and not path.is_symlink()
    if op == "delete":
        _remove(path)
    elif op == "self_loop":
        _remove(path)
        os.symlink(path.name, path)
    elif op == "pair_loop":
        _remove(path)
        twin = path.with_name(path.name + ".twin")
        if not os.path.lexists(twin):
            os.symlink(path.name, twin)
        os.symlink(twin.name, path)
    elif op == "dangle":
        _remove(path)
        os.symlink("../no/such/thing", path)
    elif op == "fifo":
        _remove(path)
        os.mkfifo(path)
    elif op == "chmod000" and not path.is_symlink():
        os.chmod(path, 0)
    elif op == "truncate" and regular:
        path.write_bytes(b"")
    elif op == "garble" and regular:
        path.write_bytes(data)
    elif op == "number" and regular:  # a plausible-looking but wrong number
        n = int.from_bytes(data[:8] or b"\x00", "big")
        path.write_text(f"{n:#x}\n" if data[:1] < b"\x80" else f"-{n}\n")


def restore(live: Path, pristine: Path) -> None:
    """Make `live` identical to `pristine` again (types, link targets, contents, modes)."""
    os.chmod(live, stat.S_IMODE(os.lstat(pristine).st_mode))
    names = set(os.listdir(live)) | set(os.listdir(pristine))
    for name in sorted(names):
        lv, pr = live / name, pristine / name
        if not os.path.lexists(pr):
            _remove(lv)
        elif pr.is_symlink():
            if not (lv.is_symlink() and os.readlink(lv) == os.readlink(pr)):
                if os.path.lexists(lv):
                    _remove(lv)
                os.symlink(os.readlink(pr), lv)
        elif pr.is_dir():
            if lv.is_symlink() or not lv.is_dir():
                if os.path.lexists(lv):
                    _remove(lv)
                shutil.copytree(pr, lv, symlinks=True)
            else:
                restore(lv, pr)
        else:
            same = (
                lv.is_file()
                and not lv.is_symlink()
                and lv.read_bytes() == pr.read_bytes()
                and os.lstat(lv).st_mode == os.lstat(pr).st_mode
            )
            if not same:
                if os.path.lexists(lv):
                    _remove(lv)
                shutil.copy2(pr, lv)


HOT = {"vendor", "device", "class", "numa_node", "driver", "dev", "uevent"}
OPS = st.sampled_from(
    [
        "truncate",
        "garble",
        "number",
        "delete",
        "self_loop",
        "pair_loop",
        "dangle",
        "fifo",
        "chmod000",
    ]
)
SYSFS_OPS = st.lists(
    st.tuples(OPS, st.floats(0, 1, exclude_max=True), st.booleans(), st.binary(max_size=16)),
    min_size=1,
    max_size=6,
)


def explained(pci: str, accel: int, events: list[dict[str, Any]], listing_dirs: set[str]) -> bool:
    for e in events:
        ev = e.get("event")
        if ev in ("health", "soc_removed") and e.get("pci") == pci:
            return True
        if ev == "sysfs_skipped":
            path = str(e.get("path", ""))
            if pci in path or pci in str(e.get("reason", "")):
                return True
            if os.path.basename(path) == f"accel{accel}" or path in listing_dirs:
                return True
    return False


async def test_fuzzed_sysfs_against_the_running_plugin(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    no_dac_override: bool,
    report: Report,
) -> None:
    report.tried = "hypothesis examples of sysfs damage written under the running plugin"
    sysfs = node.sysfs_root
    pristine = node.root / "pristine-sys"
    shutil.copytree(sysfs, pristine, symlinks=True)
    real = os.path.realpath(sysfs)
    listing_dirs = {real, f"{real}/class/accel", f"{real}/bus/pci/devices"}
    # The resync brings a resource back after damage that removed every SoC (no PreStart
    # can reach a resource that is not served); sysfs has no inotify.
    plugin = await start_plugin(
        QAIC_PRESTART_CHECK="1", QAIC_RESYNC_SECONDS="0.5", QAIC_HEALTH_POLL_SECONDS="3600"
    )
    socs = {s.pci_address: s for s in node.socs}
    await kubelet.wait_devices(QAIC, healthy=len(socs))
    log = LogTail(plugin)
    everything = entries(sysfs)
    hot = [p for p in everything if p.name in HOT or p.name.startswith("accel")]
    hot += [p for p in everything if p.parent.name in ("devices", "qaic")]
    stats: Counter[str] = Counter()
    failures: list[str] = []

    # First, proof that a permission error reaches the plugin (not only root's view of it).
    if no_dac_override:
        victim = node.socs[-1]
        log.mark()
        (node.function_dir(victim.pci_address) / "vendor").chmod(0)
        await barrier(kubelet, QAIC)
        denied = [
            e
            for e in log.since_mark()
            if e.get("event") == "sysfs_skipped" and "Permission denied" in str(e.get("reason"))
        ]
        restore(sysfs, pristine)
        assert denied, "a mode-000 vendor file was read anyway: permission errors not tested"
        await barrier(kubelet, QAIC)
        await kubelet.wait_for(lambda k: all_healthy(k, QAIC, len(socs)), timeout=15)

    async def example(ops: list[tuple[str, float, bool, bytes]]) -> None:
        log.mark()
        for op, where, focused, data in ops:
            pool = hot if focused else everything
            damage(op, pool[int(where * len(pool))], data)
            stats[op] += 1
        try:
            stats["barrier_" + await barrier(kubelet, QAIC)] += 1
            assert plugin.returncode is None, "the plugin died"
            seen = advertised(kubelet).get(QAIC, set())
            assert seen <= set(socs), f"advertised SoCs the node does not have: {seen - set(socs)}"
            events = log.since_mark()
            view = kubelet.resources[QAIC]
            for pci, soc in socs.items():
                offered = view.connected and view.health.get(pci) == "Healthy"
                if not offered and not explained(pci, soc.accel_index, events, listing_dirs):
                    summary = [(e.get("event"), e.get("pci") or e.get("path")) for e in events]
                    raise AssertionError(
                        f"{pci} not offered healthy ({view.connected}, {view.health.get(pci)}) "
                        f"and nothing logged: {ops}; events {summary[:12]}"
                    )
            stats["skipped_logged"] += sum(e.get("event") == "sysfs_skipped" for e in events)
        except AssertionError as e:
            failures.append(str(e))
            raise
        finally:
            restore(sysfs, pristine)
        stats["examples"] += 1
        await barrier(kubelet, QAIC)
        await kubelet.wait_for(lambda k: all_healthy(k, QAIC, len(socs)), timeout=15)

    try:
        await run_hypothesis(fuzz_settings(25, 300), SYSFS_OPS, example)
    finally:
        report.count = stats["examples"]
        report.lost = len(failures)
        report.details.update(
            permission_errors_bite=no_dac_override, ops=dict(stats), failures=failures[:3]
        )
    assert not plugin.events("loop_died")
    assert plugin.returncode is None


# -- qaic-util output ------------------------------------------------------------------------

WRAPPER = """#!/bin/sh
# qaic-util stand-in: replays override.out/override.rc when present, else the fake qaic-util
d=$(dirname "$0")
echo x >> "$d/calls"
if [ -f "$d/override.out" ]; then
  cat "$d/override.out"
  exit "$(cat "$d/override.rc")"
fi
exec {real} "$@"
"""


def pci_strategy(real: list[str]) -> st.SearchStrategy[str]:
    made_up = st.builds(
        lambda b, d, f: f"0000:{b:02x}:{d:02x}.{f}",
        st.integers(0, 255),
        st.integers(0, 31),
        st.integers(0, 7),
    )
    return st.sampled_from(real) | made_up | st.text(max_size=14)


def block_strategy(real: list[str]) -> st.SearchStrategy[str]:
    field = st.sampled_from(["Status", "PCI Address", "Sku Type", "Dev Link", "Dram Total", "x"])
    value = (
        st.sampled_from(["Ready", "Error", "Initializing", "", "Cloud AI 100 Pro", "Standard"])
        | st.sampled_from(["Cloud AI 100 Ultra", "AIC100 Ultra", "???"])
        | pci_strategy(real)
        | st.text(max_size=20)
    )
    lines = st.lists(st.tuples(field, value), max_size=8).map(
        lambda kv: "".join(f"\t{k}:{v}\n" for k, v in kv)
    )
    qid = st.integers(0, 20).map(lambda q: f"QID {q}\n") | st.text(max_size=10)
    noise = st.builds(lambda q, body: q + body, qid, lines)
    # Blocks that parse but may lie: made-up PCI addresses, wrong SKUs, odd statuses.
    lying = st.builds(
        lambda q, status, pci, sku, extra: (
            f"QID {q}\n\tStatus:{status}\n\tPCI Address:{pci}\n\tSku Type:{sku}\n{extra}"
        ),
        st.integers(0, 20),
        st.sampled_from(["Ready", "Error", "Initializing", "Unknown"]),
        pci_strategy(real),
        st.sampled_from(["Cloud AI 100 Ultra", "Cloud AI 100 Pro", "Cloud AI 100 Standard", "?"]),
        lines,
    )
    return lying | noise


def qaic_util_output(real: list[str]) -> st.SearchStrategy[tuple[bytes, int]]:
    text = st.lists(block_strategy(real), max_size=12).map(lambda bs: "".join(bs).encode())
    return st.tuples(text | st.binary(max_size=300), st.sampled_from([0, 0, 0, 1, 2, 139]))


async def test_fuzzed_qaic_util_against_the_running_plugin(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, report: Report
) -> None:
    report.tried = "hypothesis examples of qaic-util output and hang/garbage/crash modes"
    bin_dir = node.root / "util"
    bin_dir.mkdir()
    wrapper = bin_dir / "qaic-util"
    wrapper.write_text(WRAPPER.format(real=node.qaic_util_path))
    wrapper.chmod(0o755)
    calls = bin_dir / "calls"
    calls.touch()
    plugin = await start_plugin(
        QAIC_SKU_BASED_RESOURCE_ENABLED="1",
        QAIC_PRESTART_CHECK="1",
        QAIC_UTIL_PATH=str(wrapper),
        QAIC_HEALTH_POLL_SECONDS="0.1",
        QAIC_UTIL_TIMEOUT_SECONDS="0.5",
        QAIC_RESYNC_SECONDS="3600",
    )
    for r, n in SKU_COUNTS.items():
        await kubelet.wait_devices(r, healthy=n)
    real = [s.pci_address for s in node.socs]
    log = LogTail(plugin)
    stats: Counter[str] = Counter()
    failures: list[str] = []

    def ncalls() -> int:
        return len(calls.read_bytes())

    async def two_more_runs() -> None:
        """The poller ran qaic-util (at least) twice since now: one whole run saw the change."""
        start = ncalls()
        await until(lambda: ncalls() >= start + 4, 10, what="two qaic-util runs")

    async def healthy_again() -> None:
        await two_more_runs()
        for r in SKU_COUNTS:
            await barrier(kubelet, r)
        await kubelet.wait_for(
            lambda k: all(all_healthy(k, r, n) for r, n in SKU_COUNTS.items()), timeout=15
        )

    def check(events: list[dict[str, Any]], must_fail: bool, what: str) -> None:
        assert plugin.returncode is None, "the plugin died"
        seen = set().union(*advertised(kubelet).values())
        assert seen <= set(real), f"{what}: advertised SoCs the node lacks: {seen - set(real)}"
        failed = [e for e in events if e.get("event") == "qaic_util_failed"]
        if must_fail:
            assert failed, f"{what}: nothing usable from qaic-util and no qaic_util_failed"
        stats["failed_logged"] += len(failed)

    # The fake qaic-util's own faults first: hang (killed at the timeout), garbage, crash.
    for mode in ("hang", "garbage", "crash"):
        log.mark()
        node.set_qaic_util_mode(mode)
        await two_more_runs()
        for r in SKU_COUNTS:
            await barrier(kubelet, r)
        check(log.since_mark(), True, f"mode {mode}")
        node.set_qaic_util_mode(None)
        await healthy_again()
        stats[f"mode_{mode}"] += 1

    async def example(out: tuple[bytes, int]) -> None:
        data, rc = out
        log.mark()
        (bin_dir / "override.out").write_bytes(data)
        (bin_dir / "override.rc").write_text(str(rc))
        text = data.decode("utf-8", errors="replace")
        useless = rc != 0 or (not parse_qaic_util(text) and bool(text.strip()))
        try:
            await two_more_runs()
            for r in SKU_COUNTS:
                stats["barrier_" + await barrier(kubelet, r)] += 1
            check(log.since_mark(), useless, f"rc={rc} output={data[:120]!r}")
        except AssertionError as e:
            failures.append(str(e))
            raise
        finally:
            (bin_dir / "override.out").unlink()
        stats["examples"] += 1
        stats["useless" if useless else "parsed"] += 1
        await healthy_again()

    try:
        await run_hypothesis(fuzz_settings(12, 300), qaic_util_output(real), example)
    finally:
        report.count = stats["examples"] + sum(
            stats[f"mode_{m}"] for m in ("hang", "garbage", "crash")
        )
        report.lost = len(failures)
        report.details.update(outcomes=dict(stats), failures=failures[:3])
    assert not plugin.events("loop_died")
