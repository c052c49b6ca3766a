"""The lowest CDI spec version a spec needs, so the oldest runtimes can read it.

A runtime's CDI library refuses a spec whose `cdiVersion` it does not know ("invalid
version"), and one whose version is below what its fields need. containerd 1.7.0 to 1.7.11
(CDI library 0.5.4) know versions up to 0.5.0 only, so a spec that says 0.6.0 without
needing it is refused there for nothing. This is the Go package's `MinimumRequiredVersion`
(cncf-tags/container-device-interface, specs-go/versions.go; the table in SPEC.md, "Released
versions") over a spec as JSON-ready data, as dra-example-driver uses it for its claim specs:

- 0.3.0: the earliest version the library accepts; env, deviceNodes (path, type, major,
  minor, fileMode, permissions, uid, gid), mounts, hooks;
- 0.4.0: `mounts[].type`;
- 0.5.0: `deviceNodes[].hostPath`; device names beginning with a digit (a claim UID);
- 0.6.0: `annotations` (spec or device); a dot in the kind's class;
- 0.7.0: `intelRdt`, `additionalGids`;
- 1.1.0: `netDevices`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_LETTER = re.compile(r"[A-Za-z]")  # the Go package's IsLetter: ASCII letters only


def _edits(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield spec.get("containerEdits") or {}
    for d in spec.get("devices") or ():
        yield d.get("containerEdits") or {}


def _needs(spec: Mapping[str, Any]) -> Iterator[tuple[int, int, int]]:
    edits = list(_edits(spec))
    devices = list(spec.get("devices") or ())
    if any(e.get("netDevices") for e in edits):
        yield (1, 1, 0)
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in edits):
        yield (0, 7, 0)
    if spec.get("annotations") or any(d.get("annotations") for d in devices):
        yield (0, 6, 0)
    vendor, _, cls = str(spec.get("kind", "")).partition("/")
    if vendor and "." in cls:
        yield (0, 6, 0)
    if not all(_LETTER.match(str(d.get("name", ""))) for d in devices):
        yield (0, 5, 0)
    if any(n.get("hostPath") for e in edits for n in e.get("deviceNodes") or ()):
        yield (0, 5, 0)
    if any(m.get("type") for e in edits for m in e.get("mounts") or ()):
        yield (0, 4, 0)


def minimum_version(spec: Mapping[str, Any]) -> str:
    """The lowest `cdiVersion` that holds every field `spec` uses."""
    needed = max(_needs(spec), default=(0, 3, 0))  # 0.3.0: the earliest accepted
    return ".".join(str(n) for n in needed)
