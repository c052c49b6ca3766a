"""What the app reports to, and the no-op kept when /metrics is off.

With QAIC_METRICS_PORT=0 nothing would ever read the counters, so prometheus_client (about
5 MB of the process and a tenth of its import time) is not imported at all: `metrics_for`
returns this base class, whose methods do nothing. With a port, observability.metrics.Metrics
overrides every method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..kubelet.manager import ManagerObserver
from ..qaic.health import Signal
from ..qaic.inventory import NodeState, SocState


class MetricsSink(ManagerObserver):
    def observe_state(
        self,
        old: NodeState | None,
        new: NodeState,
        resources: Mapping[str, Sequence[SocState]],
    ) -> None: ...

    def on_held_elsewhere(self, socs: int) -> None: ...

    def signal_unreadable(self, signal: Signal) -> None: ...

    def on_allocate(self, resource: str, socs: int) -> None: ...

    def on_cross_card(self, resource: str, rpc: str) -> None: ...

    def slices_synced(self, applied: int, deleted: int) -> None: ...

    def slice_publish_failed(self, status: str) -> None: ...


def metrics_for(port: int) -> MetricsSink:
    """Prometheus metrics when they are served (a port), else the no-op sink."""
    if not port:
        return MetricsSink()
    from .metrics import Metrics

    return Metrics()
