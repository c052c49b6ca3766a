"""`python -m bench.scale [...]` is `python -m bench scale [...]`: see bench/scale/job.py."""

from .job import main

raise SystemExit(main())
