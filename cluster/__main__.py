"""`python -m cluster up`: start the e2e cluster and hold it until Ctrl-C (for poking at it).
`python -m cluster down`: put the host back after a run that was killed before its teardown."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .cluster import down, running


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    p.add_argument("command", choices=["up", "down"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "down":
        print("cleaned up a killed run" if down() else "nothing left behind")
        return 0
    try:
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
