"""`qaic-device-plugin`: read the settings (exit 2 on bad ones, one line, nothing created), then
run the allocation mode they pick; 0 on SIGTERM.

Each mode is imported only when picked: DRA mode's Kubernetes client (lightkube) stays out of a
device-plugin process, and device-plugin mode's servers out of a DRA one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .config.load import load
from .config.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(argv)
    except SettingsError as e:
        for line in str(e).splitlines():
            print(f"qaic-device-plugin: {line}", file=sys.stderr)
        return 2
    if settings.allocation_api == "dra":
        from .dra.main import main_dra

        return main_dra(settings)
    from .deviceplugin.main import main_deviceplugin

    return main_deviceplugin(settings)


if __name__ == "__main__":
    sys.exit(main())
