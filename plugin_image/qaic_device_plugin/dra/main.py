"""Entry of the DRA mode: its settings (exit 2 on bad ones), logging, then one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from ..config.settings import Settings, SettingsError
from ..core import logs
from .settings import DraSettings, load_dra


async def _serve(settings: Settings, dra: DraSettings) -> int:
    from .app import DraApp, kube_client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await DraApp(settings, dra, kube_client(dra)).run(stop)


def main_dra(settings: Settings) -> int:
    try:
        dra = load_dra()
    except SettingsError as e:
        for line in str(e).splitlines():
            print(f"qaic-device-plugin: {line}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level != "debug":  # one line per API request otherwise
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    return asyncio.run(_serve(settings, dra))
