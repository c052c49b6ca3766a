"""`python -m qaic_device_plugin.sim.node_cli`: write a fake node and print what it holds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .node import FakeNode
from .pci_tree import _specs


def summary(node: FakeNode) -> dict[str, Any]:
    return {
        "root": str(node.root),
        "sysfs_root": str(node.sysfs_root),
        "dev_root": str(node.dev_root),
        "qaic_util": str(node.qaic_util_path),
        "device_nodes": node.device_node_kind,
        "foreign": node.foreign_pci,
        "socs": [
            {
                "pci": s.pci_address,
                "accel": s.accel_index,
                "qid": s.qid,
                "card": s.card_index,
                "card_id": s.card_id,
                "sku": s.sku.value,
                "numa": s.numa_node,
            }
            for s in node.socs
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m qaic_device_plugin.sim.node",
        description="Write a fake Cloud AI 100 node (sysfs, /dev/accel, qaic-util) under --root.",
    )
    p.add_argument("--root", type=Path, required=True, help="directory to write into (fresh)")
    p.add_argument("--ultra", type=int, default=2, metavar="N", help="Ultra cards (4 SoCs each)")
    p.add_argument("--std", type=int, default=1, metavar="N", help="Standard cards")
    p.add_argument("--pro", type=int, default=1, metavar="N", help="Pro cards")
    p.add_argument("--no-foreign", action="store_true", help="leave out the Intel NPU at accel0")
    p.add_argument("--device-nodes", choices=("auto", "char", "file"), default="auto")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    args = p.parse_args(argv)
    if min(args.ultra, args.std, args.pro) < 0:
        p.error("card counts must not be negative")
    try:
        node = FakeNode(
            args.root,
            list(_specs(args.ultra, args.std, args.pro)),
            foreign_accel=not args.no_foreign,
            device_nodes=args.device_nodes,
        )
        node.write()
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = summary(node)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"sysfs: {info['sysfs_root']}  dev: {info['dev_root']}  qaic-util: {info['qaic_util']}")
    print(f"device nodes: {info['device_nodes']}  foreign accel0: {info['foreign'] or 'none'}")
    print(f"{'pci':<14} {'accel':>5} {'qid':>3} {'card':>4} {'card_id':<14} {'sku':<6} numa")
    for s in info["socs"]:
        print(
            f"{s['pci']:<14} {s['accel']:>5} {s['qid']:>3} {s['card']:>4} "
            f"{s['card_id']:<14} {s['sku']:<6} {s['numa']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
