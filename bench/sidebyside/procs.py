"""The processes of the side-by-side run and what /proc says about them (CPU per process and
per thread, RSS split into anonymous and file-backed memory)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.common import procfs
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess, node_env

from .peer import PeerProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours_env(node: FakeNode, plugin_dir: Path, metrics_port: int) -> dict[str, str]:
    """The DaemonSet's configuration on the fake node (infra/components/plugin_pod.py)."""
    return {
        **node_env(node, plugin_dir, metrics_port=metrics_port),
        "QAIC_METRICS_ADDRESS": "127.0.0.1",
        "QAIC_UDEV_ENABLED": "true",
        "QAIC_UDEV_SOURCE": "kernel",
    }


def _task_ns(pid: int, tid: str) -> int:
    """A thread's time on CPU in ns (schedstat): the 10 ms ticks of /proc/<pid>/stat are too
    coarse for an idle process that uses about that much a minute."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own: every thread's time on CPU, from schedstat; reaped children's, from
    /proc/<pid>/stat cutime+cstime in ticks: qaic-util runs are reaped by the plugin)."""
    own = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            own += _task_ns(pid, tid)
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state): cutime=16, cstime=17
    return own / 1e9, (int(fields[13]) + int(fields[14])) / tick


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed): where our idle CPU goes."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            label = "main (event loop)" if tid == str(pid) else name
            out[label] = out.get(label, 0.0) + _task_ns(pid, tid) / 1e9
    return out


def rss(pid: int) -> dict[str, float]:
    return {k: procfs.status_field(pid, k) * 1024 / 1e6 for k in ("VmRSS", "RssAnon", "RssFile")}


class Pair:
    """Both plugins on the node, started and stopped together."""

    def __init__(self, node: FakeNode, plugin_dir: Path, work: Path, binary: Path | None) -> None:
        self.node, self.plugin_dir, self.work, self.binary = node, plugin_dir, work, binary

    def ours(self, tag: str, **extra: str) -> PluginProcess:
        env = {**ours_env(self.node, self.plugin_dir, free_port()), **extra}
        return PluginProcess(env, self.work / f"ours-{tag}.log")

    def peer(self, tag: str) -> PeerProcess | None:
        if self.binary is None:
            return None
        log = self.work / f"peer-{tag}.log"
        return PeerProcess(self.binary, self.node.root, self.plugin_dir, log)


# What each step of the plugin's imports adds to RSS, in a fresh interpreter: the profile of an
# RSS miss (issue 11). Steps are cumulative; the last imports the app as the process does.
RSS_STEPS = (
    ("python", ""),
    ("grpc.aio", "grpc.aio"),
    ("protobuf + device-plugin stubs", "qaic_device_plugin.kubelet.api.deviceplugin_pb2_grpc"),
    ("prometheus_client", "prometheus_client"),
    ("pyudev + asyncinotify", "pyudev,asyncinotify"),
    ("pydantic + pydantic_settings", "pydantic_settings"),
    (
        "the plugin (app, settings, ...)",
        "qaic_device_plugin.__main__,qaic_device_plugin.deviceplugin.app",
    ),
)
_RSS_PROBE = """
import importlib, sys
for step in sys.argv[1:]:
    for m in filter(None, step.split(",")):
        importlib.import_module(m)
    st = open("/proc/self/status").read()
    print(int(st.split("VmRSS:")[1].split()[0]), flush=True)
"""


def rss_by_import() -> list[tuple[str, float]]:
    """(step, MB it adds), measured in one fresh interpreter of the plugin's venv."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, *(m for _, m in RSS_STEPS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    values = [int(x) * 1024 / 1e6 for x in done.stdout.split()]  # VmRSS KiB -> MB
    out, prev = [], 0.0
    for (name, _), mb in zip(RSS_STEPS, values, strict=True):
        out.append((name, mb - prev))
        prev = mb
    return out
