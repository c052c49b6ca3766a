"""Prometheus metrics for the plugin, on a registry of its own.

No global registry: tests and several App instances in one process each get clean counters,
and nothing a library registers globally leaks into our exposition. Labels are bounded by
design: resource names come from the SKU table, signals from the Signal enum, gRPC codes
from a fixed set; PCI addresses and error texts stay in the logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .. import __version__
from ..qaic.health import Signal
from ..qaic.inventory import NodeState, SocState
from .sink import MetricsSink

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
RPCS = ("allocate", "preferred")
# A kubelet restart is answered in milliseconds when all is well; seconds mean trouble.
REACTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_GRPC_CODE = re.compile(r"^[A-Z_]{2,40}$")


def _code(error: str) -> str:
    """`UNAVAILABLE: connect failed` -> `UNAVAILABLE`; anything else is `OTHER` (bounded)."""
    head = error.split(":", 1)[0].strip()
    return head if _GRPC_CODE.match(head) else "OTHER"


class Metrics(MetricsSink):
    """Everything the plugin counts; fed by the app, the manager and the backends."""

    def __init__(self, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Info("qaic_device_plugin", "Build of the running plugin", registry=r)
        self.info.info({"version": version})
        self.socs = Gauge(
            "qaic_socs",
            "SoCs advertised, per resource and health",
            ["resource", "health"],
            registry=r,
        )
        self.health_transitions = Counter(
            "qaic_health_transitions",
            "Per-signal health changes of known SoCs (to=unhealthy: the signal appeared; "
            "to=healthy: it cleared)",
            ["signal", "to"],
            registry=r,
        )
        self.signal_read_failures = Counter(
            "qaic_signal_read_failures",
            "Health signal reads that failed (unreadable is not unhealthy)",
            ["signal"],
            registry=r,
        )
        self.allocations = Counter(
            "qaic_allocations", "Container allocations answered", ["resource"], registry=r
        )
        self.socs_allocated = Counter(
            "qaic_allocated_socs",
            "SoCs handed out in container allocations",
            ["resource"],
            registry=r,
        )
        self.cross_card = Counter(
            "qaic_cross_card",
            "Multi-SoC sets spanning cards: preferred-allocation results (rpc=preferred) and "
            "Allocate sets (rpc=allocate)",
            ["resource", "rpc"],
            registry=r,
        )
        self.registrations = Counter(
            "qaic_registrations",
            "Successful Register calls (kind=first, or re after kubelet or socket churn)",
            ["resource", "kind"],
            registry=r,
        )
        self.registration_failures = Counter(
            "qaic_registration_failures",
            "Failed Register calls, by gRPC status code",
            ["resource", "code"],
            registry=r,
        )
        self.held_elsewhere = Gauge(
            "qaic_socs_held_elsewhere",
            "SoCs advertised Unhealthy because a running pod holds them under a resource name "
            "or device ID no longer advertised (SKU mode, shares or an override changed)",
            registry=r,
        )
        self.kubelet_reaction = Histogram(
            "qaic_kubelet_reaction_seconds",
            "From kubelet.sock reappearing to the resource's re-registration",
            buckets=REACTION_BUCKETS,
            registry=r,
        )
        self.slice_syncs = Counter(
            "qaic_dra_slice_syncs",
            "DRA mode: ResourceSlice syncs that succeeded (each one list; writes only on change)",
            registry=r,
        )
        self.slice_writes = Counter(
            "qaic_dra_slice_writes",
            "DRA mode: ResourceSlice writes (op=apply or delete); none while nothing changes",
            ["op"],
            registry=r,
        )
        self.slice_publish_failures = Counter(
            "qaic_dra_slice_publish_failures",
            "DRA mode: ResourceSlice syncs that failed, by HTTP status (unreachable: no answer)",
            ["status"],
            registry=r,
        )
        self.slices_failing = Gauge(
            "qaic_dra_slice_publish_failing",
            "DRA mode: 1 while the last ResourceSlice sync failed (/readyz says why)",
            registry=r,
        )
        # Series that exist from the start, so rate() and absent() work before the first event.
        for op in ("apply", "delete"):
            self.slice_writes.labels(op)
        for signal in Signal:
            self.signal_read_failures.labels(signal.value)
            for to in (HEALTHY, UNHEALTHY):
                self.health_transitions.labels(signal.value, to)
        self._resources: set[str] = set()

    def _know(self, resource: str) -> None:
        if resource in self._resources:
            return
        self._resources.add(resource)
        self.allocations.labels(resource)
        self.socs_allocated.labels(resource)
        for rpc in RPCS:
            self.cross_card.labels(resource, rpc)
        for kind in ("first", "re"):
            self.registrations.labels(resource, kind)

    # -- node state --------------------------------------------------------------------------

    def observe_state(
        self,
        old: NodeState | None,
        new: NodeState,
        resources: Mapping[str, Sequence[SocState]],
    ) -> None:
        """Update the SoC gauges and count what changed since `old`.

        Transitions are per signal of SoCs present in both states: a signal appearing counts
        `to="unhealthy"`, one clearing counts `to="healthy"`. So a SoC going bad counts once
        per signal in its findings, and recovering counts each signal it had. A SoC seen for
        the first time, or one that left, is not a transition. A resource that lost its last
        SoC keeps reporting 0 rather than vanishing, so alerts on it keep a series to read.
        """
        for name in self._resources - set(resources):
            self.socs.labels(name, HEALTHY).set(0)
            self.socs.labels(name, UNHEALTHY).set(0)
        for name, socs in resources.items():
            self._know(name)
            healthy = sum(1 for s in socs if s.healthy)
            self.socs.labels(name, HEALTHY).set(healthy)
            self.socs.labels(name, UNHEALTHY).set(len(socs) - healthy)
        if old is not None:
            before = old.by_pci()
            for s in new.socs:
                prev = before.get(s.soc.pci_address)
                if prev is None:
                    continue
                was = {f.signal for f in prev.findings}
                now = {f.signal for f in s.findings}
                for signal in now - was:
                    self.health_transitions.labels(signal.value, UNHEALTHY).inc()
                for signal in was - now:
                    self.health_transitions.labels(signal.value, HEALTHY).inc()
        for u in new.unreadable:
            self.signal_unreadable(u.signal)

    def on_held_elsewhere(self, socs: int) -> None:
        self.held_elsewhere.set(socs)

    def signal_unreadable(self, signal: Signal) -> None:
        """A signal read outside the scan failed too (qaic-util): count it the same way."""
        self.signal_read_failures.labels(Signal(signal).value).inc()

    # -- kubelet calls -----------------------------------------------------------------------

    def on_allocate(self, resource: str, socs: int) -> None:
        """One container allocation of `socs` distinct SoCs."""
        self._know(resource)
        self.allocations.labels(resource).inc()
        self.socs_allocated.labels(resource).inc(socs)

    def on_cross_card(self, resource: str, rpc: str) -> None:
        """QaicResource's callback; `rpc` is "allocate" or "preferred"."""
        if rpc not in RPCS:
            raise ValueError(f"unknown rpc {rpc!r}; expected one of {', '.join(RPCS)}")
        self._know(resource)
        self.cross_card.labels(resource, rpc).inc()

    # -- DRA ResourceSlices ------------------------------------------------------------------

    def slices_synced(self, applied: int, deleted: int) -> None:
        """A sync that succeeded, with the writes it needed (0 and 0: all was in place)."""
        self.slice_syncs.inc()
        self.slice_writes.labels("apply").inc(applied)
        self.slice_writes.labels("delete").inc(deleted)
        self.slices_failing.set(0)

    def slice_publish_failed(self, status: str) -> None:
        """`status`: the HTTP status (e.g. "422") or "unreachable"; bounded by construction."""
        self.slice_publish_failures.labels(status).inc()
        self.slices_failing.set(1)

    # -- ManagerObserver ---------------------------------------------------------------------

    def registered(self, resource: str, *, first: bool, reaction_seconds: float | None) -> None:
        """Count the registration; time only re-registrations, which answer a kubelet restart
        (a first registration's time is plugin start-up, not a reaction)."""
        self._know(resource)
        self.registrations.labels(resource, "first" if first else "re").inc()
        if not first and reaction_seconds is not None:
            self.kubelet_reaction.observe(reaction_seconds)

    def registration_failed(self, resource: str, error: str) -> None:
        self._know(resource)
        self.registration_failures.labels(resource, _code(error)).inc()
