"""A plugin dir so long that the plugin's socket path exceeds what a Unix socket (and gRPC, which
stops at 105 characters) accepts, while kubelet.sock there still fits: a setting the plugin
cannot use, so it must be refused like any other (exit 2, one line, nothing registered).
Found by this suite (a gRPC bind traceback and exit 1); refused since eea5eee."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import DEMO_CARDS, FakeNode
from qaic_device_plugin.sim.process import node_env, plugin_command

pytestmark = pytest.mark.reliability

GRPC_UNIX_PATH_MAX = 105  # grpc's add_insecure_port refuses longer unix:// paths


@pytest.fixture
def long_plugin_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="qrel-"))
    # kubelet.sock (12 chars) fits; qualcomm.com_qaic.sock (22 chars) does not.
    room = GRPC_UNIX_PATH_MAX - len("/kubelet.sock") - len(str(base)) - 1
    d = base / ("d" * room)
    d.mkdir()
    assert len(str(d / "kubelet.sock")) <= GRPC_UNIX_PATH_MAX
    assert len(str(d / "qualcomm.com_qaic.sock")) > GRPC_UNIX_PATH_MAX
    yield d
    shutil.rmtree(base, ignore_errors=True)


async def test_plugin_dir_too_long_for_a_socket_is_refused(
    tmp_path: Path, long_plugin_dir: Path
) -> None:
    node = FakeNode(tmp_path / "node", DEMO_CARDS)
    node.write()
    env = {**os.environ, **node_env(node, long_plugin_dir), "QAIC_LOG_FORMAT": "text"}
    async with KubeletSim(long_plugin_dir) as kubelet:
        proc = await asyncio.create_subprocess_exec(
            *plugin_command(),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        registrations = len(kubelet.registrations)
    lines = err.decode(errors="replace").splitlines()
    assert proc.returncode == 2, (proc.returncode, lines[-3:])
    assert len(lines) == 1, lines[-3:]
    assert lines[0].startswith("qaic-device-plugin: invalid setting QAIC_DEVICE_PLUGIN_DIR=")
    assert registrations == 0
    assert sorted(p.name for p in long_plugin_dir.iterdir()) == []  # kubelet.sock gone too
