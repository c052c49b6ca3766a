"""The fake node's qaic-util: the script written to the node (stdlib only), and the QID order
Qualcomm's runtime uses."""

from __future__ import annotations

from collections.abc import Sequence

STATE_NAME = "qaic-util-state.json"

# The fake qaic-util: stdlib only, so it runs in any image with a python3.
QAIC_UTIL_SCRIPT = r'''#!/usr/bin/env python3
"""Fake qaic-util for the simulated node: prints `qaic-util -q` from the state file beside it.

Env FAKE_QAIC_UTIL_MODE=hang|garbage|crash|nolib (or "mode" in the state file) injects
faults; "qid_order" in the state file numbers the SoCs in another order.
"""
import json
import os
import sys
import time

STATE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "qaic-util-state.json")


def block(qid, dev):
    ready = dev["status"] == "Ready"
    lines = [
        "QID %d" % qid,
        "\tStatus:%s" % dev["status"],
        "\tPCI Address:%s" % dev["pci_address"],
        "\tPCI Info:Processing accelerators Qualcomm Device %s" % dev["device_id"],
        "\tMax Link Speed:16GT/s",
        "\tMax Link Width:8",
        "\tDev Link:/dev/accel/accel%d " % dev["accel"],
    ]
    if ready:
        lines += [
            "\tHW Version:0.2.0.0",
            "\tFW Version:1.16.2",
            "\tDram Total:%d MB" % dev["dram_total_mb"],
            "\tDram Free:%d MB" % dev["dram_total_mb"],
            "\tNsp Total:%d" % dev["nsp_total"],
            "\tNsp Free:%d" % dev["nsp_total"],
            "\tNSP Defective PG Mask: 0x0",
            "\tSku Type:%s" % dev["sku_type"],
        ]
    return "\n".join(lines) + "\n"


def main(argv):
    query, only = False, None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "-q":
            query = True
        elif a == "-d" and args and args[0].isdigit():
            only = int(args.pop(0))
        else:
            sys.stderr.write("usage: qaic-util [-d QID] -q\n")
            return 2
    if not query:
        sys.stderr.write("usage: qaic-util [-d QID] -q\n")
        return 2
    try:
        with open(STATE) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        sys.stderr.write("qaic-util: cannot read %s: %s\n" % (STATE, exc))
        return 1
    mode = os.environ.get("FAKE_QAIC_UTIL_MODE") or state.get("mode") or ""
    delay = os.environ.get("FAKE_QAIC_UTIL_DELAY")
    if delay:
        time.sleep(float(delay))
    if mode == "hang":
        while True:
            time.sleep(3600)
    if mode == "nolib":
        sys.stderr.write(
            "%s: error while loading shared libraries: libpci.so.3: cannot open shared "
            "object file: No such file or directory\n" % sys.argv[0]
        )
        return 127
    if mode == "garbage":
        sys.stdout.buffer.write(b"\x00\xffqaic: \x1b[31mgarbage QID x\n\tStatus\n:::\n\xfe\n")
        return 0
    devices = sorted(state["devices"], key=lambda d: d["pci_address"])
    order = state.get("qid_order")
    if order:
        rank = {pci: i for i, pci in enumerate(order)}
        devices.sort(key=lambda d: (rank.get(d["pci_address"], len(rank)), d["pci_address"]))
    if only is not None and not 0 <= only < len(devices):
        sys.stderr.write("qaic-util: no device with QID %d\n" % only)
        return 1
    out = [block(q, d) for q, d in enumerate(devices) if only is None or q == only]
    if mode == "crash":
        sys.stdout.write(out[0][:40] if out else "")
        sys.stdout.flush()
        sys.stderr.write("Segmentation fault (core dumped)\n")
        return 139
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def runtime_decimal_order(addresses: Sequence[str]) -> list[str]:
    """PCI addresses in the order the open-source QAic runtime numbers QIDs: libpci's devices
    keyed by `"%04d%02d%02d%02d" % (domain, bus, dev, fn)` in a std::map, i.e. DECIMAL fields
    compared as text, which departs from PCI-address order once a bus number reaches 0x64
    (quic/software-kit-for-qualcomm-cloud-ai-100, lib/runtime-platform/src/os/linux/QOsal.cpp,
    enumAicDevices). For tests of the QID cross-check."""

    def key(pci: str) -> str:
        dom, bus, rest = pci.split(":")
        dev, fn = rest.split(".")
        return f"{int(dom, 16):04d}{int(bus, 16):02d}{int(dev, 16):02d}{int(fn, 16):02d}"

    return sorted(addresses, key=key)
