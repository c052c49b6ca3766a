"""What to build: read from plugin_image/image.json (the one source of truth), the package
version and the git SHA. Nothing here declares resources, so it is trivially testable."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_JSON = REPO_ROOT / "plugin_image" / "image.json"
VERSION_FILE = REPO_ROOT / "plugin_image" / "qaic_device_plugin" / "__init__.py"

_VERSION_RE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass(frozen=True)
class ImageSpec:
    """The build description from image.json, with paths resolved against the repo root."""

    name: str
    context: Path
    dockerfile: Path
    platforms: tuple[str, ...]
    build_args: dict[str, str]


def load_image_spec(path: Path = IMAGE_JSON) -> ImageSpec:
    data = json.loads(path.read_text())
    root = path.resolve().parent.parent
    return ImageSpec(
        name=str(data["name"]),
        context=(root / str(data["context"])).resolve(),
        dockerfile=(root / str(data["dockerfile"])).resolve(),
        platforms=tuple(str(p) for p in data["platforms"]),
        build_args={str(k): str(v) for k, v in dict(data.get("build_args", {})).items()},
    )


def read_version(path: Path = VERSION_FILE) -> str:
    match = _VERSION_RE.search(path.read_text())
    if match is None:
        raise RuntimeError(f"no __version__ in {path}")
    return match.group(1)


def git_sha(root: Path = REPO_ROOT) -> str | None:
    """GITHUB_SHA in CI, else ``git rev-parse HEAD``; None when neither is available."""
    env = os.environ.get("GITHUB_SHA", "").strip().lower()
    if _SHA_RE.match(env):
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if _SHA_RE.match(out) else None


def image_tags(repository: str, version: str, sha: str | None) -> list[str]:
    """``<repo>:<version>`` and, when the SHA is known, ``<repo>:<version>-<sha12>``."""
    tags = [f"{repository}:{version}"]
    if sha:
        tags.append(f"{repository}:{version}-{sha[:12]}")
    return tags


def relative_to_cwd(path: Path) -> str:
    """Paths handed to the builder are relative to the working directory, so the state
    (and every preview diff) is the same on every machine that runs from the repo."""
    return os.path.relpath(path, Path.cwd())
