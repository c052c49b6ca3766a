"""A Container Device Interface (CDI) spec for the node's SoCs.

With CDI on, Allocate also names each SoC as `qualcomm.com/qaic=<name>` in `cdi_devices`, and
a CDI-aware runtime (containerd >= 1.7, CRI-O >= 1.25 with CDI enabled) applies the spec's
edits itself. The spec follows the CDI specification (SPEC.md in
cncf-tags/container-device-interface) and says the lowest version its fields need
(core/cdi_version.py): 0.5.0, because every device name begins with a digit (a PCI domain),
which containerd 1.7.0 and CRI-O 1.25 read; 0.6.0, said before, needed containerd 1.7.12:

- `cdiVersion` is semver; `kind` is `<vendor DNS subdomain>/<class>`, the class at most 63
  characters, alphanumeric at both ends with `-`, `_`, `.` between;
- a device `name` is alphanumeric at both ends with `-`, `_`, `.` between. PCI addresses
  have colons, which the spec's rule does not allow, so `0000:35:00.0` becomes
  `0000-35-00.0`: injective, because PCI addresses contain no `-`;
- the spec is valid only with at least one device, so with no SoCs the file is removed;
- `deviceNodes[].path` is the path in the container; without `hostPath` the runtime uses the
  same path on the host. Paths are the host's (`/dev/accel/accelN`), never our mount of it:
  the runtime, not the plugin, reads them.

Every SoC the plugin knows is listed, healthy or not, so the spec does not churn as health
flips; Allocate never hands out an unhealthy SoC anyway.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ..core.cdi_version import minimum_version
from .inventory import NodeState
from .model import Soc
from .nfd import remove_if_present, replace_if_changed
from .resources import BASE, DOMAIN

log = logging.getLogger(__name__)

CDI_KIND = f"{DOMAIN}/{BASE}"  # qualcomm.com/qaic
CDI_DIR = Path("/var/run/cdi")  # the dynamic-spec directory runtimes watch by default
SPEC_FILE = f"{DOMAIN}-{BASE}.json"  # qualcomm.com-qaic.json: <vendor>-<class>.json
_PCI = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def cdi_name(pci: str) -> str:
    """The CDI device name of the SoC at `pci`: `0000:35:00.0` -> `0000-35-00.0`."""
    if not _PCI.fullmatch(pci):
        raise ValueError(f"not a PCI address: {pci!r}")
    return pci.replace(":", "-")


def cdi_device_name(pci: str) -> str:
    """The fully-qualified name Allocate returns in `cdi_devices`."""
    return f"{CDI_KIND}={cdi_name(pci)}"


def spec(socs: list[Soc]) -> dict[str, Any]:
    devices = [
        {
            "name": cdi_name(s.pci_address),
            "containerEdits": {
                "deviceNodes": [{"path": f"/dev/{s.dev_relpath}", "permissions": "rw"}]
            },
        }
        for s in sorted(socs, key=lambda s: s.pci_address)
    ]
    body = {"kind": CDI_KIND, "devices": devices}
    return {"cdiVersion": minimum_version(body), **body}


def render(socs: list[Soc]) -> str:
    return json.dumps(spec(socs), indent=2) + "\n"


class CdiSpecFile:
    """Keeps `<directory>/qualcomm.com-qaic.json` equal to the node's SoCs."""

    def __init__(self, directory: Path = CDI_DIR) -> None:
        self.path = Path(directory) / SPEC_FILE

    def update(self, state: NodeState) -> bool:
        """Rewrite the spec if it would change; True when it was written or removed.

        Errors are logged and retried on the next call, never raised: serving devices
        through DeviceSpecs goes on even when the spec cannot be written.
        """
        socs = [s.soc for s in state.socs]
        try:
            changed = (
                replace_if_changed(self.path, render(socs))
                if socs
                else remove_if_present(self.path)
            )
        except OSError as e:
            log.warning(
                "CDI spec not written",
                extra={"event": "cdi_write_failed", "path": str(self.path), "error": str(e)},
            )
            return False
        if changed:
            log.info(
                "CDI spec updated" if socs else "CDI spec removed",
                extra={"event": "cdi_updated", "path": str(self.path), "devices": len(socs)},
            )
        return changed
