"""Entry of device-plugin mode: its one directory, logging, then one event loop."""

from __future__ import annotations

import asyncio
import signal
import sys

from ..config.settings import Settings
from ..core import logs
from .app import App


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await App(settings).run(stop)


def main_deviceplugin(settings: Settings) -> int:
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
