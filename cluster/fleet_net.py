"""The fleet's network: one L2 segment on a documentation range, nothing routed off the machine.

The control plane's namespace holds a bridge (`br0`, the control plane's address x.y.z.10);
the host's veth end (x.y.z.1, for kubectl) and one veth per node are its ports. Each node
has a namespace of its own with `eth0` at x.y.z.(10 + index) and a pod CIDR
10.244.<index>.0/24, routed through the node's address from the control plane's namespace.
Deleting a node's namespace deletes its veth pair (and its iptables rules) with it.

    host ── qaic-e2e-h ═╗
                        ║ br0 x.y.z.10  (control plane netns "qaic-e2e")
          n1 ═══ eth0 x.y.z.11 (netns qaic-fleet-1)   n2 ═══ eth0 x.y.z.12 ...
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from .host import NetNs, Undo, run

BRIDGE = "br0"
#: What kube-proxy would do for the one Service the plugin talks to (DRA mode: its
#: ResourceSlices), from the node itself (OUTPUT) and from pod IPs (PREROUTING).
API_SERVICE = "10.96.0.1"
SERVICE_RANGE = "10.96.0.0/24"


@dataclass(frozen=True)
class BridgedNetNs(NetNs):
    """The control plane's namespace: as NetNs, but its address sits on a bridge that the
    host's veth and every node's veth join."""

    def create(self, undo: Undo) -> None:
        super().create(undo)
        for cmd in (["ip", "addr", "flush", "dev", "eth0"],
                    ["ip", "link", "add", BRIDGE, "type", "bridge"],
                    ["ip", "link", "set", "eth0", "master", BRIDGE],
                    ["ip", "addr", "add", f"{self.ns_addr}/24", "dev", BRIDGE],
                    ["ip", "link", "set", BRIDGE, "up"]):
            run(*self.enter(), *cmd)


@dataclass(frozen=True)
class NodeNet:
    """One node's network namespace, wired to the control plane's bridge."""

    name: str  # the namespace's name (= the node's name)
    index: int  # 1..: the node's address and pod CIDR
    subnet: ipaddress.IPv4Network

    @property
    def addr(self) -> str:
        return str(self.subnet[10 + self.index])

    @property
    def pod_subnet(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def port(self) -> str:
        """The veth's end on the bridge (in the control plane's namespace)."""
        return f"n{self.index}"

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={self.path}"]

    def create(self, cp: BridgedNetNs, undo: Undo) -> None:
        if self.path.exists():  # a run killed before its teardown
            self.delete()
        run("ip", "netns", "add", self.name)
        undo.push(f"netns {self.name}", self.delete)
        run("ip", "-n", cp.name, "link", "add", self.port, "type", "veth", "peer", "name",
            "eth0", "netns", self.name)
        for cmd in (["link", "set", self.port, "master", BRIDGE],
                    ["link", "set", self.port, "up"]):
            run("ip", "-n", cp.name, *cmd)
        for cmd in (["link", "set", "lo", "up"],
                    ["addr", "add", f"{self.addr}/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"]):  # no default route: nothing leaves
            run("ip", "-n", self.name, *cmd)
        # Pod replies to the control plane come back through the node (DNAT'ed pod traffic).
        run("ip", "-n", cp.name, "route", "replace", self.pod_subnet, "via", self.addr)
        undo.push(f"route to {self.pod_subnet}", lambda: run(
            "ip", "-n", cp.name, "route", "del", self.pod_subnet, check=False))
        run(*self.enter(), "sysctl", "-qw", "net.ipv4.ip_forward=1")  # this namespace only
        # The Service range needs a route for connect() to reach the OUTPUT chain's DNAT.
        run("ip", "-n", self.name, "route", "add", SERVICE_RANGE, "via", cp.ns_addr)
        for chain in ("OUTPUT", "PREROUTING"):
            run(*self.enter(), "iptables", "-t", "nat", "-A", chain, "-d", f"{API_SERVICE}/32",
                "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination",
                f"{cp.ns_addr}:6443")

    def delete(self) -> None:
        """The namespace, and with it the veth pair, its route and its iptables rules."""
        run("ip", "netns", "del", self.name, check=False)
