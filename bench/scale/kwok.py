"""kwok v0.8.0, the fake-node controller of the scale run: found in the tool cache, or built once
by `e2e/tools.sh kwok` (a wrapper module from the Go module proxy, ~1.5-4.5 min on 2 cores).

kwok runs no kubelet: its Stage objects (the `stages.yaml` that e2e/tools.sh joins from the
module's kustomize/stage files) mark a node Ready and keep its heartbeat, and mark a bound pod
Running, then remove it once it has a deletion timestamp. So no device plugin and no DRA
kubelet plugin runs on these nodes: the scheduler still allocates claims from the slices the
bench publishes, and counts extended resources from node status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common.errors import BenchError

REPO = Path(__file__).resolve().parents[2]  # bench/scale/kwok.py -> the checkout
VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
#: kwok manages only nodes with this annotation (never the e2e cluster's real node).
ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: Pod IPs for ~10^4 pods: kwok's default /24 runs out at 254.
POD_CIDR = "10.128.0.0/14"


@dataclass(frozen=True)
class Kwok:
    binary: Path
    stages: Path
    how: str  # "cached" or "built in N s"


def home() -> Path:
    tools = Path(os.environ.get("QAIC_TOOLS_DIR", "/var/cache/qaic-k8s/tools"))
    return tools / f"kwok-{VERSION}"


def locate(*, build: bool = True) -> Kwok:
    """The cached kwok; built first when missing (and `build`). Raises BenchError when it
    cannot be had: a scale run without its fake nodes has nothing to measure."""
    d = home()
    found = Kwok(d / "bin" / "kwok", d / "stages.yaml", "cached")
    if (d / ".done").exists() and found.binary.exists() and found.stages.exists():
        return found
    if not build:
        raise BenchError(f"kwok not built ({d}) and building was not asked for")
    if shutil.which("go") is None:
        raise BenchError("kwok not built and Go not found (e2e/tools.sh kwok needs it)")
    print(f"building kwok {VERSION} once, into {d} ...", flush=True)
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "e2e" / "tools.sh"), "kwok"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not found.binary.exists():
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise BenchError(f"kwok build failed (exit {done.returncode}): {tail}")
    return Kwok(found.binary, found.stages, f"built in {time.monotonic() - t0:.0f} s")


def argv(kwok: Kwok, kubeconfig: Path) -> list[str]:
    key, value = ANNOTATION
    return [
        str(kwok.binary), f"--kubeconfig={kubeconfig}", f"--config={kwok.stages}",
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={key}={value}",
        f"--cidr={POD_CIDR}", "--node-ip=10.127.0.1",
    ]
