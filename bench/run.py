"""`python bench/run.py [...]` is `python -m bench [...]` (run from anywhere)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main

    sys.exit(main())
