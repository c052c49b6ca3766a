"""The whole program: validate the stack config, then declare the components."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from infra.cluster_apis import require_served
from infra.cluster_pools import check_pools
from infra.components.device_plugin import DevicePlugin, DevicePluginArgs
from infra.components.image import PluginImage, PluginImageArgs
from infra.components.workloads import Workloads, WorkloadsArgs
from infra.config import ConfigError, settings_from_pulumi
from infra.image_spec import REPO_ROOT, git_sha, load_image_spec, read_version
from infra.settings import PROJECT, StackSettings


@dataclass
class Program:
    """What :func:`run` declared; tests inspect it, ``__main__`` exports ``outputs``."""

    settings: StackSettings
    provider: k8s.Provider
    image: PluginImage
    plugin: DevicePlugin
    workloads: Workloads
    outputs: dict[str, object] = field(default_factory=dict)


def render_dir(settings: StackSettings, root: Path = REPO_ROOT) -> str:
    """An absolute path: a relative ``renderYamlDir`` is taken from the repo root (where
    Pulumi.yaml lives). The provider keeps this path in its state and resolves it in its
    own working directory, so a relative path would depend on where the CLI ran things."""
    return str((root / settings.render_yaml_dir).resolve())


def kubernetes_provider(settings: StackSettings) -> k8s.Provider:
    if settings.render_mode:
        return k8s.Provider("render", render_yaml_to_directory=render_dir(settings))
    return k8s.Provider("cluster", context=settings.kube_context or None)


def run(settings: StackSettings | None = None) -> Program:
    """Declare everything. Config errors surface before any resource exists."""
    s = settings if settings is not None else settings_from_pulumi()
    config = pulumi.Config(PROJECT)
    password = config.get_secret("registryPassword") if s.registry_password else None

    spec = load_image_spec()
    image = PluginImage("qaic-device-plugin", PluginImageArgs(
        spec=spec,
        version=read_version(),
        sha=git_sha(),
        pinned_ref=s.image_ref,
        registry=s.registry,
        push=s.push,
        registry_username=s.registry_username,
        registry_password=password,
        build_on_preview=s.build_on_preview,
        load=s.load_image,
    ))

    provider = kubernetes_provider(s)
    k8s_opts = pulumi.ResourceOptions(providers=[provider])
    plugin = DevicePlugin(
        "qaic-device-plugin",
        DevicePluginArgs(settings=s, image_ref=image.ref, registry_password=password),
        opts=k8s_opts,
    )
    workloads = Workloads(
        "qaic-samples", WorkloadsArgs(settings=s, served_by=(plugin.daemonset,)),
        opts=pulumi.ResourceOptions(providers=[provider], depends_on=[plugin]),
    )
    outputs: dict[str, object] = {
        "imageRef": image.ref,
        "imageTags": image.tags,
        "imageBuilt": image.built,
        "namespace": plugin.namespace,
        "daemonSetName": plugin.daemonset_name,
        "allocationApi": s.allocation_api,
        "skuBasedResources": s.sku_based_resources,
        "resourceNames": plugin.resource_names,
        "deviceClasses": plugin.device_class_names,
        "workloads": workloads.created,
        "renderYamlDir": render_dir(s) if s.render_mode else "",
    }
    return Program(s, provider, image, plugin, workloads, outputs)


#: The exit status by which a Python program tells the language host that it has already
#: shown the user an actionable error (pulumi-language-python-exec uses it the same way), so
#: the CLI adds no "an unhandled error occurred: program exited with non-zero exit code".
#: Raising pulumi.RunError would print the message without a traceback but exit 1, and the
#: CLI then adds that second line.
SHOWN_ERROR_EXIT = 32


def main() -> Program:
    """Entry point used by ``infra/__main__.py``: a config error ends the program with its
    one line and nothing else (see :data:`SHOWN_ERROR_EXIT`); otherwise the exports."""
    try:
        settings = settings_from_pulumi()
        # The cluster serves what the settings ask for, before anything is declared.
        require_served(pulumi.get_stack(), settings)
        # Its nodes: the pool this stack selects has nodes, no other stack serves them.
        pools = check_pools(pulumi.get_stack(), settings)
        for line in pools.warnings:
            pulumi.log.warn(line)
        if pools.errors:
            for line in pools.errors:
                pulumi.log.error(line)
            raise SystemExit(SHOWN_ERROR_EXIT)
        program = run(settings)
    except ConfigError as exc:
        pulumi.log.error(str(exc))
        raise SystemExit(SHOWN_ERROR_EXIT) from None
    for key, value in program.outputs.items():
        pulumi.export(key, value)
    return program
