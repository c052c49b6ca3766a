"""The embedded default: a simulated node, the real plugin process, a kubelet-like client.

`make demo` (or `python -m qaic_device_plugin.sim.demo`) writes a node with 2 Ultra cards,
1 Standard and 1 Pro, starts `qaic-device-plugin` against it exactly as a DaemonSet would
(environment variables only), and narrates what kubelet sees.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .kubelet import KubeletSim
from .node import DEMO_CARDS, FakeNode
from .process import PluginProcess, node_env


def _say(text: str = "") -> None:
    print(text, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def run(workdir: Path, sku_mode: bool) -> int:
    node = FakeNode(workdir / "node", DEMO_CARDS)
    node.write()
    plugin_dir = workdir / "device-plugins"
    plugin_dir.mkdir()
    socs = {s.pci_address: s for s in node.socs}

    _say("== Simulated node ==")
    _say(f"sysfs {node.sysfs_root}, /dev {node.dev_root}, qaic-util {node.qaic_util_path}")
    _say(f"{'PCI address':14} {'accel':7} {'QID':>3}  {'SKU':6} {'NUMA':>4}  card")
    for s in node.socs:
        _say(
            f"{s.pci_address:14} accel{s.accel_index:<2} {s.qid:>3}  {s.sku.value:6} "
            f"{s.numa_node:>4}  {s.card_id}"
        )
    _say(f"(accel0 is an Intel NPU at {node.foreign_pci}: another driver's device)")

    env = node_env(node, plugin_dir)
    env["QAIC_SKU_BASED_RESOURCE_ENABLED"] = "true" if sku_mode else "false"
    env["QAIC_LOG_FORMAT"] = "json"
    log_path = workdir / "plugin.log"
    async with KubeletSim(plugin_dir) as kubelet:
        _say("\n== Starting qaic-device-plugin (the real console script) ==")
        _say(
            "env: "
            + " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("QAIC_SKU"))
        )
        t0 = time.monotonic()
        plugin = PluginProcess(env, log_path)
        await plugin.start()
        try:
            expected = (
                {
                    "qualcomm.com/qaic-ultra": 8,
                    "qualcomm.com/qaic-std": 1,
                    "qualcomm.com/qaic-pro": 1,
                }
                if sku_mode
                else {"qualcomm.com/qaic": 10}
            )
            for name, count in expected.items():
                await kubelet.wait_devices(name, healthy=count, timeout=20)
            first = min(r.at for r in kubelet.registrations)
            _say(
                f"registered {len(kubelet.registrations)} resource(s); "
                f"process start -> first Register: {_ms(first - t0)}"
            )

            _say("\n== What kubelet sees (ListAndWatch) ==")
            for name in sorted(kubelet.resources):
                view = kubelet.resources[name]
                _say(
                    f"{name}: {len(view.healthy)} healthy, {len(view.unhealthy)} unhealthy; "
                    f"preferred allocation: {view.options.get_preferred_allocation_available}"
                )
                for dev in sorted(view.health):
                    _say(f"   {dev}  {view.health[dev]:9}  NUMA {list(view.numa.get(dev, ()))}")

            multi = "qualcomm.com/qaic-ultra" if sku_mode else "qualcomm.com/qaic"
            view = kubelet.resources[multi]
            _say(f"\n== A 4-SoC request on {multi} ==")
            # Make one Ultra card partly used first, as on a busy node.
            busy = [p for p in view.healthy if socs[p].card_index == 0][:1]
            available = [p for p in view.healthy if p not in busy]
            chosen = await kubelet.preferred(multi, available, [], 4)
            cards = {socs[p].card_id for p in chosen}
            _say(f"one SoC of card {socs[busy[0]].card_id} already in use")
            _say(f"GetPreferredAllocation(size=4) -> {chosen}")
            _say(f"   on {len(cards)} card(s): {sorted(cards)}")
            resp = await kubelet.allocate(multi, chosen)
            c = resp.container_responses[0]
            _say("Allocate ->")
            for d in c.devices:
                _say(f"   DeviceSpec {d.container_path} (host {d.host_path}, {d.permissions})")
            _say(
                f"   QAIC_VISIBLE_DEVICES={c.envs['QAIC_VISIBLE_DEVICES']} "
                "(runtime QIDs, not accel numbers)"
            )

            victim = chosen[0]
            _say(f"\n== /dev/accel/accel{socs[victim].accel_index} disappears ({victim}) ==")
            t = time.monotonic()
            node.remove_device_node(victim)
            await kubelet.wait_for(lambda k: k.resources[multi].health.get(victim) == "Unhealthy")
            _say(f"kubelet sees {victim} Unhealthy after {_ms(time.monotonic() - t)}")
            t = time.monotonic()
            node.restore_device_node(victim)
            await kubelet.wait_for(lambda k: k.resources[multi].health.get(victim) == "Healthy")
            _say(f"... and Healthy again after {_ms(time.monotonic() - t)}, no restart")

            _say("\n== A SoC reset (qaic-util reports Error, then Ready) ==")
            reset = chosen[1]
            t = time.monotonic()
            node.set_status(reset, "Error")
            node.remove_device_node(reset)
            await kubelet.wait_for(lambda k: k.resources[multi].health.get(reset) == "Unhealthy")
            _say(f"{reset} Unhealthy after {_ms(time.monotonic() - t)}")
            node.set_status(reset, "Ready")
            node.restore_device_node(reset)
            await kubelet.wait_for(lambda k: k.resources[multi].health.get(reset) == "Healthy")
            _say(f"{reset} recovered after {_ms(time.monotonic() - t)} in total")

            _say("\n== kubelet restarts (deletes every socket, re-creates kubelet.sock) ==")
            before = len(kubelet.registrations)
            started = await kubelet.restart()
            await kubelet.wait_for(
                lambda k: len(k.registrations) >= before + len(expected), timeout=10
            )
            latest = max(r.at for r in kubelet.registrations[before:])
            _say(
                f"all {len(expected)} resource(s) re-registered "
                f"{_ms(latest - started)} after kubelet came back"
            )
            for name, count in expected.items():
                await kubelet.wait_devices(name, healthy=count)
            _say(
                "devices listed again: "
                + ", ".join(f"{n} x{len(kubelet.resources[n].healthy)}" for n in sorted(expected))
            )
        finally:
            _say("\n== SIGTERM ==")
            t = time.monotonic()
            code = await plugin.stop()
            left = sorted(
                p.name for p in plugin_dir.iterdir() if p.is_socket() and p.name != "kubelet.sock"
            )
            _say(
                f"plugin exited {code} in {_ms(time.monotonic() - t)}; "
                f"sockets left behind: {left or 'none'}"
            )
            _say(f"plugin log: {log_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qaic_device_plugin.sim.demo")
    parser.add_argument(
        "--sku-mode",
        choices=["on", "off"],
        default="on",
        help="QAIC_SKU_BASED_RESOURCE_ENABLED for the demo (default on)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the simulated node directory")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="qaic-demo-") if args.keep else None
    if tmp is not None:
        return asyncio.run(run(Path(tmp), args.sku_mode == "on"))
    with tempfile.TemporaryDirectory(prefix="qaic-demo-") as d:
        return asyncio.run(run(Path(d), args.sku_mode == "on"))


if __name__ == "__main__":
    sys.exit(main())
