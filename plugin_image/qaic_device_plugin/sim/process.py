"""Run the real `qaic-device-plugin` console script against a simulated node, as a subprocess.

Shared by the tests, the demo and the benchmarks so all of them exercise the process exactly
as deployed: environment variables in, JSON log lines out, signals to stop it.
"""


from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from .node import FakeNode


def plugin_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("qaic-device-plugin")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "qaic_device_plugin"]


def node_env(
    node: FakeNode, plugin_dir: Path, *, qaic_util: bool = True, metrics_port: int = 0
) -> dict[str, str]:
    env = {
        "QAIC_SYSFS_ROOT": str(node.sysfs_root),
        "QAIC_DEV_ROOT": str(node.dev_root),
        "QAIC_DEVICE_PLUGIN_DIR": str(plugin_dir),
        "QAIC_LOG_FORMAT": "json",
        "QAIC_METRICS_PORT": str(metrics_port),
    }
    # Without qaic-util: a path that does not exist, so PATH and /opt are not searched either.
    env["QAIC_UTIL_PATH"] = str(node.qaic_util_path) if qaic_util else str(node.root / "absent")
    # Never the host's kubelet: a PodResources socket only where a test serves one.
    env["QAIC_POD_RESOURCES_SOCKET"] = str(node.root / "pod-resources" / "kubelet.sock")
    return env


class PluginProcess:
    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        args: list[str] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        """`launcher`: a command that ends by exec-ing its arguments (e.g. `unshare ...`), so
        the plugin runs under it with the same pid."""
        self.launcher = list(launcher)
        self.env = {**os.environ, **env}
        for k in ("QAIC_CONFIG_FILE",):  # never inherit a config file from the caller
            if k not in env:
                self.env.pop(k, None)
        self.log_path = log_path
        self.args = args or []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - local file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                *self.launcher,
                *plugin_command(),
                *self.args,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send `sig` and wait; kill after `timeout` so a hung plugin cannot hang the caller."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise

    async def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines, optionally only those with `event == name`."""
        out = []
        for line in self.log_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (name is None or rec.get("event") == name):
                out.append(rec)
        return out

    async def wait_events(
        self, name: str, count: int, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Until the log holds `count` lines of event `name`: awaits the log's writes (the
        plugin may log an event a moment after the peer it talks to has seen its effect)."""
        with Inotify() as inotify:
            inotify.add_watch(self.log_path, Mask.MODIFY)
            async with asyncio.timeout(timeout):
                while len(found := self.events(name)) < count:
                    await inotify.get()
        return found

    async def __aenter__(self) -> PluginProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.stop()
