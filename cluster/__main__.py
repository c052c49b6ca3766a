"""`python -m cluster up`: start the e2e cluster and hold it until Ctrl-C (for poking at it);
`--nodes N` starts the fleet instead (one control plane, N nodes of their own).
`python -m cluster down`: put the host back after a run that was killed before its teardown."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .cluster import down, running
from .fleet import Fleet, node_spec, running_fleet


def _hold_fleet(nodes: int) -> None:
    with running_fleet([node_spec(i) for i in range(1, nodes + 1)]) as fleet:
        _print_fleet(fleet)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


def _print_fleet(fleet: Fleet) -> None:
    print(f"KUBECONFIG={fleet.kubeconfig}  (API {fleet.server})", flush=True)
    for node in fleet.nodes.values():
        cards = "+".join(c.sku.value for c in node.spec.cards)
        print(f"  {node.name}  {node.net.addr}  pods {node.net.pod_subnet}  cards {cards}  "
              f"Ready {node.timing.ready_seconds:.1f} s after kubelet start "
              f"({node.timing.bring_up_seconds:.1f} s from nothing)  "
              f"enter: {' '.join(node.enter())}", flush=True)
    print("Ctrl-C stops", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--nodes", type=int, default=0,
                   help="start a fleet of N nodes (their own namespaces) instead of the "
                        "single-node cluster")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "down":
        print("cleaned up a killed run" if down() else "nothing left behind")
        return 0
    try:
        if args.nodes > 0:
            _hold_fleet(args.nodes)
            return 0
        with running() as cluster:
            print(f"KUBECONFIG={cluster.kubeconfig}  (node {cluster.netns.ns_addr}); Ctrl-C stops",
                  flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
