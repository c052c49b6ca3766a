"""PluginImage: the multi-platform device-plugin image, or a pinned reference."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import pulumi
import pulumi_docker_build as docker_build

from infra.image_spec import ImageSpec, image_tags, relative_to_cwd

TYPE_TOKEN = "qaic-k8s:index:PluginImage"


@dataclass(frozen=True)
class PluginImageArgs:
    spec: ImageSpec
    version: str
    sha: str | None
    pinned_ref: str = ""
    registry: str = ""
    push: bool = False
    registry_username: str = ""
    registry_password: pulumi.Input[str] | None = None
    build_on_preview: bool = False
    load: bool = False


#: ``uname -m`` -> the OCI platform the local image store can run.
_MACHINES = {"x86_64": "linux/amd64", "amd64": "linux/amd64",
             "aarch64": "linux/arm64", "arm64": "linux/arm64"}


def host_platform(machine: str | None = None) -> str:
    """The platform of the machine running ``pulumi up`` (what a local image store holds)."""
    arch = (machine or platform.machine()).lower()
    if arch not in _MACHINES:
        raise ValueError(f"cannot build for the host machine type {arch!r}: "
                         f"supported are {', '.join(sorted(_MACHINES))}")
    return _MACHINES[arch]


def registry_host(registry: str) -> str:
    """``ghcr.io/acme`` -> ``ghcr.io`` (what ``docker login`` needs)."""
    return registry.split("/", 1)[0]


class PluginImage(pulumi.ComponentResource):
    """Builds ``plugin_image/Dockerfile`` for every platform in image.json, or passes a
    pinned reference through. ``ref`` is what the DaemonSet must run: with a push it is the
    pushed tag with its digest (``repo:tag@sha256:...``).

    ``load``: a docker-build image with neither push nor exports stays in the build cache,
    where no node can run it. Loading exports it into the local Docker image store instead;
    a store holds one platform per tag, so only the host's platform is built."""

    ref: pulumi.Output[str]
    tags: list[str]
    built: bool

    def __init__(
        self, name: str, args: PluginImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        spec = args.spec
        self.built = not args.pinned_ref
        if args.pinned_ref:
            self.tags = [args.pinned_ref]
            self.ref = pulumi.Output.from_input(args.pinned_ref)
            self.image: docker_build.Image | None = None
            self.platforms: list[str] = []
        else:
            repository = f"{args.registry}/{spec.name}" if args.registry else spec.name
            self.tags = image_tags(repository, args.version, args.sha)
            registries: list[docker_build.RegistryArgsDict] = []
            if args.registry_username and args.registry_password is not None:
                registries.append({
                    "address": registry_host(args.registry),
                    "username": args.registry_username,
                    "password": pulumi.Output.secret(args.registry_password),
                })
            cache_from: list[docker_build.CacheFromArgsDict] = []
            cache_to: list[docker_build.CacheToArgsDict] = []
            if args.registry:
                cache_ref = f"{repository}:buildcache"
                cache_from.append({"registry": {"ref": cache_ref}})
                if args.push:
                    cache_to.append({"registry": {
                        "ref": cache_ref,
                        "mode": docker_build.CacheMode.MAX,
                        "image_manifest": True,
                        "oci_media_types": True,
                    }})
            labels = {
                "org.opencontainers.image.title": spec.name,
                "org.opencontainers.image.version": args.version,
            }
            if args.sha:
                labels["org.opencontainers.image.revision"] = args.sha
            platforms = [host_platform()] if args.load else list(spec.platforms)
            self.platforms = platforms
            self.image = docker_build.Image(
                f"{name}-build",
                context={"location": relative_to_cwd(spec.context)},
                dockerfile={"location": relative_to_cwd(spec.dockerfile)},
                platforms=[docker_build.Platform(p) for p in platforms],
                build_args=dict(spec.build_args),
                tags=self.tags,
                labels=labels,
                push=args.push,
                load=args.load or None,
                registries=registries or None,
                cache_from=cache_from or None,
                cache_to=cache_to or None,
                build_on_preview=args.build_on_preview,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.ref = self.image.ref
        self.register_outputs({"ref": self.ref, "tags": self.tags, "built": self.built})
