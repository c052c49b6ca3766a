"""What a cluster run changed on the host, on disk while it runs, so that the next run (or
`python -m cluster down`) can put the host back after a run killed before its teardown
(SIGKILL, a CI timeout, a power cut of the test process)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import host

log = logging.getLogger(__name__)

STATE = Path("/run/qaic-e2e.state.json")


@dataclass
class State:
    work: str
    sysctls: dict[str, str] = field(default_factory=dict)
    new_dirs: list[str] = field(default_factory=list)  # made by the run: removed after it
    netns_before: list[str] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)  # fixed paths the run claimed
    #: cgroups (at each hierarchy's root) holding the run's pods: kubepods for the single
    #: node, one per node of a fleet (each kubelet's cgroupRoot)
    cgroups: list[str] = field(default_factory=lambda: ["kubepods"])
    #: mount points in the host's namespace to unmount first (a fleet's mount namespaces)
    mounts: list[str] = field(default_factory=list)

    def save(self) -> None:
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.rename(STATE)

    @staticmethod
    def remove() -> None:
        STATE.unlink(missing_ok=True)


def recover(netns_name: str) -> bool:
    """Undo a killed run's changes, if its state file is there; True when it was.

    Pods die first (by their cgroups), then whatever names the run's work dir (containerd,
    its shims, kubelets, the control plane); then mounts, namespaces and files go."""
    try:
        state = State(**json.loads(STATE.read_text()))
    except FileNotFoundError:
        return False
    except (ValueError, TypeError) as exc:
        log.warning("unreadable %s (%s): removing it", STATE, exc)
        State.remove()
        return False
    log.warning("a cluster run (%s) was killed before its teardown: cleaning up", state.work)
    for cgroup in state.cgroups:
        host.kill_all(host.pids_in_cgroups(cgroup), grace=3)
    host.kill_all(host.pids_matching(state.work), grace=5)
    for mount in state.mounts:
        host.unmount_under(Path(mount))
    for owned in state.owned:
        host.unmount_under(Path(owned))
    host.unmount_under(Path(state.work))
    for cgroup in state.cgroups:
        host.remove_cgroups(cgroup)
    for name in host.netns_names() - set(state.netns_before):
        host.run("ip", "netns", "del", name, check=False)
    host.run("ip", "link", "del", f"{netns_name[:10]}-h", check=False)
    for name, value in state.sysctls.items():
        (Path("/proc/sys") / name).write_text(value)
    for path in [*state.owned, *state.new_dirs, state.work]:
        shutil.rmtree(path, ignore_errors=True)
    State.remove()
    return True
