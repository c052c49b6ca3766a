"""The Go peer of issue 11: Intel's NPU device plugin v0.36.0, built once per machine and run as
a subprocess next to ours.

Why this plugin: it is a maintained Go device plugin for `/dev/accel` devices, and our fake node
already carries an Intel NPU (8086:7d1d) at accel0, so both plugins can run on the very same
node against the very same kubelet simulator. It is built from the Go module proxy by
`e2e/tools.sh intel_npu_plugin` into `$QAIC_TOOLS_DIR/intel-npu-plugin-v0.36.0/bin` (a `.done`
marker, like every other real tool; ~30 s cold on 2 cores). Its kubelet directory is fixed at
/var/lib/kubelet/device-plugins, so it runs in a private mount namespace (`unshare -m`) where a
tmpfs covers /var/lib and the bench's plugin directory is bind-mounted at that path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # bench/sidebyside/peer.py -> the checkout
VERSION = "v0.36.0"
RESOURCE = "npu.intel.com/accel"
FIXED_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
# sh runs as the namespace's first process and execs the plugin, so the pid we hold is its pid.
_LAUNCH = (
    f"set -e; mount -t tmpfs bench-peer /var/lib; mkdir -p {FIXED_PLUGIN_DIR}; "
    f'mount --bind "$1" {FIXED_PLUGIN_DIR}; shift; exec "$@"'
)


@dataclass(frozen=True)
class PeerBinary:
    path: Path | None
    reason: str  # why there is none, or how it was found
    build_seconds: float | None = None  # set when this run built it


def tools_dir() -> Path:
    return Path(os.environ.get("QAIC_TOOLS_DIR", "/var/cache/qaic-k8s/tools"))


def cached_binary() -> Path:
    return tools_dir() / f"intel-npu-plugin-{VERSION}" / "bin" / "npu_plugin"


def locate(*, build: bool = True) -> PeerBinary:
    """The cached peer binary; built first (e2e/tools.sh) when Go is here and it is missing.
    Never raises: a machine without Go, root or unshare still gets our own figures."""
    binary = cached_binary()
    done = binary.parent.parent / ".done"
    if os.geteuid() != 0:
        return PeerBinary(None, "needs root (a private mount namespace for its fixed plugin dir)")
    if shutil.which("unshare") is None:
        return PeerBinary(None, "unshare(1) not found")
    if done.exists() and binary.exists():
        return PeerBinary(binary, f"cached at {binary}")
    if not build:
        return PeerBinary(None, f"not built ({binary} missing) and building was not asked for")
    if shutil.which("go") is None:
        return PeerBinary(None, "Go not found: cannot build it from the module proxy")
    t0 = time.monotonic()
    print(f"building the Go peer ({VERSION}) once, into {binary.parent} ...", flush=True)
    done_proc = subprocess.run(
        ["bash", str(REPO / "e2e" / "tools.sh"), "intel_npu_plugin"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - t0
    if done_proc.returncode != 0 or not binary.exists():
        tail = " | ".join(done_proc.stderr.strip().splitlines()[-3:])
        return PeerBinary(None, f"build failed (exit {done_proc.returncode}): {tail}")
    return PeerBinary(binary, f"built in {seconds:.0f} s", build_seconds=seconds)


class PeerProcess:
    """npu_plugin -prefix NODE_ROOT, its plugin dir bind-mounted from `plugin_dir`."""

    def __init__(self, binary: Path, node_root: Path, plugin_dir: Path, log_path: Path) -> None:
        self.binary = binary
        self.node_root = node_root
        self.plugin_dir = plugin_dir
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - local file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                _LAUNCH,
                "sh",
                str(self.plugin_dir),
                str(self.binary),
                "-prefix",
                str(self.node_root),
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

    async def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
