"""The device-order lever of issue 22, as an experiment: the scale run with every published
slice holding its SoC devices first, then the whole cards and parts.

The driver's publisher (kubelet/dra/slices.py with counters.split_devices) orders a slice's
devices by name, and keeps each card's devices together: `card-<id>`, its parts
`card-<id>-socs-..`, then its SoCs `soc-..`. The scheduler's allocator tries a node's devices
in slice order, evaluating the class's CEL on each, so a SoC request first goes past the card
and part devices. This runs the bench with the slices' devices reordered (SoCs first) by
wrapping `counters.split_devices` in this process only; nothing else changes. It measures
what reordering in the driver would give before the driver is changed:

    PYTHONPATH=. .venv/bin/python bench/scale/levers/socs_first.py --nodes 300 \\
        --client-qps 1000 --loads 0.85 --profile --modes dra
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import qaic_device_plugin.kubelet.dra.counters as counters
from bench.scale import job

Json = dict[str, Any]
_split = counters.split_devices


def _socs_first(chunk: list[Json]) -> list[Json]:
    """SoC devices (type `soc`, or no type: a driver before cards) first, each part in name
    order."""
    def kind(d: Json) -> str | None:
        t = (d.get("attributes") or {}).get("type")
        return t.get("string") if isinstance(t, dict) else None

    return sorted(chunk, key=lambda d: (kind(d) not in (None, "soc"), str(d["name"])))


def split_socs_first(devices: Sequence[Json], per_slice: int) -> list[list[Json]]:
    """The publisher's own split into slices, each slice's devices then SoCs first."""
    return [_socs_first(chunk) for chunk in _split(devices, per_slice)]


def main(argv: Sequence[str]) -> int:
    counters.split_devices = split_socs_first  # slices.py calls counters.split_devices
    return job.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
