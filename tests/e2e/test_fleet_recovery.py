"""A fleet run killed before its teardown (SIGKILL, a CI timeout) and `python -m cluster down`
afterwards: the host is as it was, with nothing of the fleet left (processes, mount and
network namespaces, mounts, cgroups, iptables rules, sysctls, fixed paths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import host, leftovers, mountns
from cluster.tools import missing_prerequisites

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

ROOT = Path(__file__).resolve().parents[2]
#: The harness's knobs as pytest was started with them (QAIC_E2E_KEEP, _REUSE_IMAGE ...): the
#: suite's autouse fixture clears QAIC_* for each test, which is for the plugin, not for it.
ENV = dict(os.environ)
CGROUPS = Path("/sys/fs/cgroup")


#: What names the parts a cluster run makes (other engineers' work on this machine aside).
OURS = ("qaic", "kubepods", "kubelet", "containerd", "cdi", "/run/netns", "/dev/accel", "cni")


def ours(names: list[str]) -> list[str]:
    return sorted(n for n in names if any(o in n for o in OURS))


def snapshot() -> dict[str, object]:
    """What a fleet changes on the host, as comparable values."""
    return {
        "netns": ours(list(host.netns_names())),
        "links": ours([line.split(":")[1].strip().split("@")[0] for line in host.run(
            "ip", "-o", "link").stdout.splitlines()]),
        "mounts": ours([line.split()[4] for line in
                        Path("/proc/self/mountinfo").read_text().splitlines()]),
        "cgroups": ours([str(d.relative_to(CGROUPS)) for h in CGROUPS.iterdir()
                         if h.is_dir() and not h.is_symlink() for d in h.iterdir()
                         if d.is_dir()]),
        "iptables": host.run("iptables-save").stdout.count("\n-A "),
        "sysctls": {n: (Path("/proc/sys") / n).read_text() for n in host.KUBELET_SYSCTLS},
        "paths": {p: os.path.exists(p) for p in ("/dev/accel", "/run/qaic-e2e",
                                                 str(mountns.ROOT), "/var/lib/kubelet")},
    }


def test_down_after_a_killed_fleet_leaves_nothing_behind() -> None:
    """Operator situation: the CI job running the fleet is killed (SIGKILL: no teardown).
    The next run, or `python -m cluster down`, puts the host back as it was."""
    why = missing_prerequisites(cdi=True)
    if why:
        pytest.skip("; ".join(why))
    before = snapshot()
    up = subprocess.Popen([sys.executable, "-m", "cluster", "up", "--nodes", "2"], cwd=ROOT,
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert up.stdout is not None
    lines = []
    for line in up.stdout:  # the fleet prints this once every node is Ready
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    else:
        pytest.fail("the fleet did not come up:\n" + "".join(lines[-60:]))
    work = json.loads(leftovers.STATE.read_text())["work"]
    during = snapshot()
    assert during != before  # it did change the host
    assert host.pids_matching(work)
    up.kill()
    up.wait()
    time.sleep(1)  # whatever the killed process started keeps running: that is the point
    assert host.pids_matching(work), "the fleet's processes died with the test process"
    down = subprocess.run([sys.executable, "-m", "cluster", "down"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert down.returncode == 0 and "cleaned up a killed run" in down.stdout, down
    assert not {p for p in host.pids_matching(work) if host.alive(p)}
    assert snapshot() == before
    assert not Path(work).exists()
