"""Pulumi entry point (Pulumi.yaml: ``main: infra/``).

The language host runs this file with the ``infra/`` directory on ``sys.path``; the
program imports ``infra.*`` and ``workloads.*`` from the repository root, so put the root
first on the path.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.program import main  # noqa: E402

main()
