"""Assemble the image's root filesystem: only what the plugin runs (issue 11: every node pulls
and stores the image; the target is <= 80 MB per arch).

Run inside the Dockerfile's runtime-root stage with the base's own python3 (stdlib only):

    python3 slim_rootfs.py /opt/venv /slim

It copies, into DEST, keeping every symlink on the way (merged /usr, the venv's python link):
- the venv and the interpreter it links to;
- the interpreter's standard library minus what only builds, installs or tests software
  (a list below; `--keep` puts one back), without __pycache__;
- every shared library that the interpreter, any extension module, or the libraries the host's
  qaic-util needs (EXTRA_LIBS) link against, found with `ldd`, plus the dynamic loader;
- `ldconfig` and its cache: ctypes.util.find_library (pyudev's way to libudev) runs it;
- `/usr/bin/env`, so a `#!/usr/bin/env python3` qaic-util wrapper (the CI's fake one) runs;
- pci.ids when present (qaic-util's libpci names devices with it), /etc/passwd and group.

It works on any glibc base with python3 (the public python:3.12-slim-bookworm or the local
Debian bases of .ci/image-stage.sh): paths come from sysconfig and ldd, not from a layout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Not needed to run the plugin: development, packaging, GUI and test parts of the stdlib.
DROP_STDLIB = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "distutils",
    "venv",
    "unittest",
    "pydoc.py",
    "doctest.py",
    "site-packages",
    "dist-packages",
    "config-",  # prefix: config-3.x-<triplet> (static library, Makefile)
)
# Linked by the host's qaic-util (mounted from the Platform SDK) and by pyudev (ctypes).
EXTRA_LIBS = ("libudev.so.1", "libstdc++.so.6", "libgcc_s.so.1", "libpci.so.3", "librt.so.1")
DATA = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/etc/ld.so.cache")
# `#!/usr/bin/env python3` scripts (the CI's fake qaic-util) need env; 50 kB.
EXTRA_BINS = ("/usr/bin/env",)
_LDD_PATH = re.compile(r"(/\S+)")


def _copy(src: str, dest: Path, done: set[str]) -> None:
    """Copy `src` (absolute) to dest + src, re-creating each symlink along the path and copying
    what it points to as well."""
    if src in done:
        return
    done.add(src)
    parts = Path(src).parts
    cur = Path("/")
    for i, part in enumerate(parts[1:], start=1):
        cur = cur / part
        target = dest / str(cur).lstrip("/")
        if cur.is_symlink():
            link = os.readlink(cur)
            if not target.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(link)
            # one step (cur.parent has no symlink left): a chain of links is re-created link
            # by link, as the venv's python -> /usr/bin/python3 -> python3.11 needs
            step = os.path.normpath(os.path.join(cur.parent, link))
            rest = os.path.join(*parts[i + 1 :]) if i + 1 < len(parts) else ""
            _copy(os.path.join(step, rest) if rest else step, dest, done)
            return
    target = dest / src.lstrip("/")
    if Path(src).is_dir():
        for entry in sorted(os.listdir(src)):
            _copy(os.path.join(src, entry), dest, done)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)


def _elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _ldd(path: str) -> list[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        if "not found" in line:
            raise SystemExit(f"slim_rootfs: {path}: {line.strip()}")
        m = _LDD_PATH.search(line.split("=>")[-1])
        if m:
            libs.append(m.group(1))
    return libs


def _find_lib(name: str) -> str | None:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.strip().startswith(name + " ") and "=>" in line:
            return line.split("=>")[-1].strip()
    return None


def _dropped(rel: str, keep: set[str]) -> bool:
    head = rel.split("/", 1)[0]
    if head in keep:
        return False
    return any(head == d or (d.endswith("-") and head.startswith(d)) for d in DROP_STDLIB)


def assemble(venv: Path, dest: Path, keep: set[str]) -> None:
    done: set[str] = set()
    python = os.path.realpath(venv / "bin" / "python3")
    _copy(str(venv), dest, done)
    _copy(python, dest, done)
    elves = [python]
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = sysconfig.get_config_var("DESTSHARED") or ""
    for root, dirs, files in os.walk(stdlib):
        rel_root = os.path.relpath(root, stdlib)
        dirs[:] = [
            d
            for d in dirs
            if d != "__pycache__" and not _dropped(os.path.normpath(f"{rel_root}/{d}"), keep)
        ]
        for f in files:
            rel = os.path.normpath(f"{rel_root}/{f}")
            if not _dropped(rel, keep):
                _copy(os.path.join(root, f), dest, done)
    if dynload and not dynload.startswith(stdlib):
        _copy(dynload, dest, done)
    for root, dirs, files in os.walk(venv):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        elves += [os.path.join(root, f) for f in files if f.endswith(".so") or ".so." in f]
    for root, _, files in os.walk(dynload or stdlib):
        elves += [os.path.join(root, f) for f in files if f.endswith(".so")]
    for name in EXTRA_LIBS:
        found = _find_lib(name)
        if found is None:
            raise SystemExit(f"slim_rootfs: {name} is not installed in the base")
        elves.append(found)
    elves += [b for b in EXTRA_BINS if os.path.exists(b)]
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    _copy(ldconfig, dest, done)
    _copy("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else ldconfig, dest, done)
    seen: set[str] = set()
    while elves:
        path = elves.pop()
        if path in seen or not _elf(Path(path)):
            continue
        seen.add(path)
        _copy(path, dest, done)
        elves += _ldd(path)
    for extra in DATA:
        if os.path.exists(extra):
            _copy(extra, dest, done)
    etc = dest / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nqaic:x:995:\n")
    for d in ("tmp", "root", "run", "proc", "sys", "dev"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("venv", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--keep", action="append", default=[], help="a stdlib entry not to drop")
    args = p.parse_args(argv)
    assemble(args.venv, args.dest, set(args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
