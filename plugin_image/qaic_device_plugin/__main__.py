"""`qaic-device-plugin`: exit 2 on bad settings (one line, nothing created), 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from . import logs
from .app import App
from .settings import Settings, SettingsError
from .settings_load import load


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await App(settings).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(argv)
    except SettingsError as e:
        for line in str(e).splitlines():
            print(f"qaic-device-plugin: {line}", file=sys.stderr)
        return 2
    if settings.allocation_api == "dra":
        from .dra_main import main_dra  # DRA mode: lightkube is imported only there

        return main_dra(settings)
    try:  # the one directory we create: a path we cannot use is bad input, not a crash
        settings.device_plugin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(
            f"qaic-device-plugin: invalid setting QAIC_DEVICE_PLUGIN_DIR="
            f"{str(settings.device_plugin_dir)!r}: {e.strerror}; "
            "accepted: a directory (or a path where one can be created)",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(_serve(settings))


if __name__ == "__main__":
    sys.exit(main())
