"""`python -m bench.cluster [--arrivals N] [--seed S]`: see bench/cluster/simulation.py."""

from .simulation import main

raise SystemExit(main())
