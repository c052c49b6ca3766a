"""The cluster's images, made here (no registry): pause and a sample image from the static
busybox with buildah `FROM scratch`, and the plugin image the image stage built.

Each is exported once as a docker-archive into the cache and imported into the cluster's
containerd with `ctr images import` (REAL_PARTS.md §2, §4). Pods use imagePullPolicy Never.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .host import run

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("QAIC_E2E_IMAGE_CACHE", "/var/cache/qaic-k8s/e2e-images"))
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
PAUSE = "localhost/pause:e2e"
SAMPLE = "localhost/qaic-sample:e2e"
PLUGIN = "localhost/qaic-device-plugin:e2e"
#: What the sample image's shell needs; busybox runs each applet through its symlink.
APPLETS = ("sh", "ls", "sleep", "cat", "env", "echo", "true", "test", "[", "printf", "grep")
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


#: What the image is built from (plugin_image/.dockerignore keeps the rest out).
IMAGE_INPUTS = ("plugin_image", "pyproject.toml", ".dockerignore")


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def plugin_version() -> str:
    text = (REPO_ROOT / "plugin_image/qaic_device_plugin/__init__.py").read_text()
    m = re.search(r'^__version__ *= *"(.*)"', text, re.M)
    if m is None:
        raise RuntimeError("no __version__ in qaic_device_plugin/__init__.py")
    return m.group(1)


def image_stage_tag() -> str:
    """What .ci/image-stage.sh leaves in buildah storage for this machine's arch."""
    name = json.loads((REPO_ROOT / "plugin_image/image.json").read_text())["name"]
    return f"localhost/{name}:{plugin_version()}-ci-{host_arch()}"


def buildah_image_id(ref: str) -> str | None:
    proc = run("buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref,
               check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


@dataclass(frozen=True)
class Archive:
    name: str  # the name:tag the archive carries
    path: Path


def _busybox_image(name: str, entrypoint: list[str], cmd: list[str]) -> str:
    """A scratch image holding the static busybox and its applet links; returns its ID."""
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp)
        (rootfs / "bin").mkdir()
        shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
        for applet in APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        for d in ("dev", "proc", "sys", "tmp", "etc"):
            (rootfs / d).mkdir()
        ctr = run("buildah", "from", "scratch").stdout.strip()
        try:
            run("buildah", "copy", ctr, str(rootfs), "/")
            run("buildah", "config", "--entrypoint", json.dumps(entrypoint), "--cmd",
                " ".join(cmd), "--env", "PATH=/bin", ctr)
            run("buildah", "commit", "-q", ctr, name)
        finally:
            run("buildah", "rm", ctr, check=False)
    image_id = buildah_image_id(name)
    assert image_id is not None
    return image_id


def _export(name: str, image_id: str) -> Archive:
    """docker-archive of `name`, cached by image ID (a changed image gets a new file)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    slug = name.rsplit("/", 1)[-1].replace(":", "-")
    path = CACHE / f"{slug}-{image_id[:16]}.tar"
    if not path.exists():
        for old in CACHE.glob(f"{slug}-*.tar"):
            old.unlink()
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        run("buildah", "push", "-q", name, f"docker-archive:{tmp}:{name}")
        tmp.rename(path)
    return Archive(name, path)


def sample_images() -> list[Archive]:
    """The pause image (sandbox) and the sample workloads' image, built if missing."""
    out = []
    for name, entry in ((PAUSE, ["/bin/sh", "-c", PAUSE_SCRIPT]), (SAMPLE, ["/bin/sh", "-c"])):
        image_id = buildah_image_id(name) or _busybox_image(name, entry, [] if name == PAUSE
                                                            else ["env; ls -l /dev/accel"])
        out.append(_export(name, image_id))
    return out


def _revision(ref: str) -> str:
    return run("buildah", "inspect", "--type", "image", "--format",
               '{{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}', ref,
               check=False).stdout.strip()


def plugin_image() -> Archive:
    """The image stage's image for this arch, tagged PLUGIN. The stage runs first when that
    image is missing, was built from another commit than the checkout's HEAD (another
    worktree may share the tag), or QAIC_E2E_REBUILD_IMAGE=1: `make e2e` alone still tests
    a real build of this commit. QAIC_E2E_REUSE_IMAGE=1 takes an existing image from another
    commit as it is (for work on the harness while the plugin's code moves: the stage takes
    about 30 min on a loaded 2-core machine)."""
    source = image_stage_tag()
    head = run("git", "-C", str(REPO_ROOT), "rev-parse", "HEAD", check=False).stdout.strip()
    built = _revision(source) if buildah_image_id(source) else ""
    # Another commit's image still serves when nothing that goes into the image changed.
    stale = not built or (built != head and run(
        "git", "-C", str(REPO_ROOT), "diff", "--quiet", built, head, "--", *IMAGE_INPUTS,
        check=False).returncode != 0)
    if stale and built and os.environ.get("QAIC_E2E_REUSE_IMAGE") == "1":
        log.warning("QAIC_E2E_REUSE_IMAGE=1: running the plugin image of %s, not of HEAD %s",
                    built[:12], head[:12])
        stale = False
    if os.environ.get("QAIC_E2E_REBUILD_IMAGE") == "1" or stale:
        log.warning("building the plugin image with .ci/image-stage.sh (%s %s)", source,
                    "is from another commit" if buildah_image_id(source) else "is missing")
        proc = subprocess.run(["bash", str(REPO_ROOT / ".ci/image-stage.sh")], cwd=REPO_ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0 or buildah_image_id(source) is None:
            raise RuntimeError(f"image stage did not leave {source}:\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-2000:]}")
    run("buildah", "tag", source, PLUGIN)
    image_id = buildah_image_id(PLUGIN)
    assert image_id is not None
    return _export(PLUGIN, image_id)


def import_into(containerd_socket: Path, archives: list[Archive], ctr: str = "ctr") -> None:
    for archive in archives:
        run(ctr, "--address", str(containerd_socket), "-n", "k8s.io", "images", "import",
            str(archive.path))


def tag_in(containerd_socket: Path, source: str, target: str, ctr: str = "ctr") -> None:
    """A second name for an image already in containerd (a "new release" of the same bits,
    for rolling-upgrade tests: a changed image reference rolls the DaemonSet)."""
    run(ctr, "--address", str(containerd_socket), "-n", "k8s.io", "images", "tag", "--force",
        source, target)
