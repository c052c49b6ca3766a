"""The real process when the node is hostile: inotify watches exhausted, the metrics port held
by another process, a supervised task dying; and readiness (`/readyz`) around kubelet."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from http_probe import free_port, http_get, wait_http

from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
# Runs the plugin in its own user namespace whose inotify watch limit is 0: add_watch fails
# with ENOSPC for real, and the host's fs.inotify limits stay untouched.
NO_WATCHES = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_inotify_watches && exec "$@"',
    "sh",
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def no_watches() -> list[str]:
    probe = subprocess.run([*NO_WATCHES, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    return NO_WATCHES


async def test_inotify_watches_exhausted(
    node: FakeNode, plugin_dir: Path, start_plugin: StartPlugin, no_watches: list[str]
) -> None:
    """No watch can be added: the plugin warns once per directory, naming the sysctl, backs
    off, serves through the periodic rescans, stays cheap and stops on SIGTERM."""
    port = free_port()
    plugin = await start_plugin(
        launcher=no_watches,
        QAIC_RESYNC_SECONDS="0.5",
        QAIC_UDEV_ENABLED="false",
        QAIC_METRICS_PORT=str(port),
        QAIC_METRICS_ADDRESS="127.0.0.1",
    )
    assert await wait_http(port, "/healthz", 200) == "ok\n"
    async with KubeletSim(plugin_dir) as kubelet:  # appears later: no watch sees it
        await kubelet.wait_devices(QAIC, healthy=10, timeout=10)
        await wait_http(port, "/readyz", 200)
        cpu0, t0 = cpu_seconds(plugin.pid), time.monotonic()
        pci = node.socs[0].pci_address
        node.remove_device_node(pci)  # seen by the rescan only
        await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
        node.restore_device_node(pci)
        await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # the measured window
        assert cpu_seconds(plugin.pid) - cpu0 < 1.0
        assert (await http_get(port, "/healthz"))[0] == 200
    warnings = plugin.events("watch_failed")
    assert sorted(w["path"] for w in warnings) == sorted(
        [str(plugin_dir), str(node.dev_root / "accel")]
    )
    assert all(w["level"] == "warning" for w in warnings)
    assert all("fs.inotify.max_user_watches" in w["msg"] for w in warnings)
    t0 = time.monotonic()
    assert await plugin.stop(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0


async def test_metrics_port_held_by_another_process(
    kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        plugin = await start_plugin(QAIC_METRICS_PORT=str(port), QAIC_METRICS_ADDRESS="127.0.0.1")
        await kubelet.wait_devices(QAIC, healthy=10)
        await asyncio.sleep(2)  # several bind retries (0.5 s, then 1 s, ...) happen here
        assert plugin.returncode is None
        [failed] = plugin.events("metrics_bind_failed")
        assert (failed["address"], failed["port"], failed["level"]) == ("127.0.0.1", port, "error")
    finally:
        holder.close()
    assert await wait_http(port, "/healthz", 200, timeout=10) == "ok\n"
    assert await wait_http(port, "/readyz", 200) == "ready\n"
    assert plugin.events("metrics_serving")[0]["attempts"] > 1
    # bound to exactly that address: another loopback address is not served
    with pytest.raises(OSError):
        await http_get(port, "/healthz", host="127.0.0.2")


async def test_a_dying_manager_task_ends_the_process(
    plugin_dir: Path, start_plugin: StartPlugin
) -> None:
    """The plugin dir replaced by a file: the manager's watch cannot serve its socket again
    and dies; the process must not go on advertising devices nobody re-registers."""
    async with KubeletSim(plugin_dir) as kubelet:
        plugin = await start_plugin()
        await kubelet.wait_registered(QAIC)
    try:
        shutil.rmtree(plugin_dir)
        plugin_dir.write_text("not a directory\n")
        assert await plugin.wait(timeout=10) == 1
    finally:
        plugin_dir.unlink(missing_ok=True)
    [died] = plugin.events("loop_died")
    assert died["loop"] in ("plugin-dir-watch", "plugin-dir-resync")
    assert "Traceback" in died["exc"]


async def test_readyz_follows_registration(plugin_dir: Path, start_plugin: StartPlugin) -> None:
    port = free_port()
    await start_plugin(QAIC_METRICS_PORT=str(port), QAIC_METRICS_ADDRESS="127.0.0.1")
    body = await wait_http(port, "/readyz", 503, contains="kubelet socket")
    assert body == f"not ready: kubelet socket {plugin_dir / 'kubelet.sock'} absent\n"
    assert (await http_get(port, "/healthz"))[0] == 200  # alive, just not ready
    async with KubeletSim(plugin_dir) as kubelet:
        await kubelet.wait_registered(QAIC)
        assert await wait_http(port, "/readyz", 200) == "ready\n"
        # a restarted kubelet that does not take our Register yet
        kubelet.refuse_registrations = "not yet"
        await kubelet.restart()
        body = await wait_http(port, "/readyz", 503)
        assert body == f"not ready: not registered with the current kubelet: {QAIC}\n"
        kubelet.refuse_registrations = None
        await kubelet.wait_registered(QAIC, count=2, timeout=15)
        assert await wait_http(port, "/readyz", 200) == "ready\n"
