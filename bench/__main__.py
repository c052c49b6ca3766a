"""`python -m bench`: see bench/run.py."""

import sys

from bench.cli import main

sys.exit(main())
