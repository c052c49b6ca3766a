"""Reading and validating a stack's config before any resource is declared.

The Pulumi CLI type-checks every key declared in Pulumi.yaml first (a boolean that is not
``true``/``false`` never reaches the program; docs/provisioning.md shows its messages). It
then hands the program a flat map of ``<namespace>:<key>`` to strings (arrays as JSON text,
secure values decrypted and listed as secret). :func:`raw_config` reads that map exactly as
the SDK does, so keys of our namespace that the model does not know are reported instead of
silently ignored.

Every failure is a :class:`ConfigError`: one sentence naming the stack, the key, the bad
value and what is accepted.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi.runtime.config as runtime_config
from pydantic import ValidationError

from infra.config_parts import quantity_value
from infra.settings import FIELDS_BY_ALIAS, PROJECT, StackSettings


class ConfigError(Exception):
    """A stack configuration problem, reported as one line."""


def raw_config(project: str = PROJECT) -> dict[str, str]:
    """This program's config map (``key -> text``), as the CLI passed it."""
    merged: dict[str, Any] = {}
    merged.update(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{project}:"
    out: dict[str, str] = {}
    for full_key, value in merged.items():
        if full_key.startswith(prefix):
            out[full_key[len(prefix) :]] = value if isinstance(value, str) else json.dumps(value)
    return out


def secret_keys(project: str = PROJECT) -> set[str]:
    """Keys (without namespace) the CLI marked secret."""
    keys = set(runtime_config.get_config_secret_keys_env())
    keys |= {k for k in runtime_config.CONFIG.get() if runtime_config.is_config_secret(k)}
    prefix = f"{project}:"
    return {k[len(prefix) :] for k in keys if k.startswith(prefix)}


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _key(key: str) -> str:
    return f"'{PROJECT}:{key}'"


def _invalid(stack: str, key: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(
        f"stack {stack!r}: {_key(key)} is {_shown(value)}, but it must be {accepted}."
    )


def _combination(stack: str, key: str, value: object, problem: str) -> ConfigError:
    return ConfigError(f"stack {stack!r}: {_key(key)} is {_shown(value)}, which {problem}.")


def _unknown(stack: str, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS_BY_ALIAS), n=1)
    hint = f"did you mean {_key(close[0])}?" if close else "the keys are declared in Pulumi.yaml."
    return ConfigError(f"stack {stack!r}: {_key(key)} is not a known key; {hint}")


def load_settings(
    stack: str,
    raw: Mapping[str, str],
    secrets: set[str] | frozenset[str] = frozenset(),
) -> StackSettings:
    """Validate a raw config map; raise :class:`ConfigError` on the first problem."""
    for key in sorted(raw):
        if key not in FIELDS_BY_ALIAS:
            raise _unknown(stack, key)
    try:
        settings = StackSettings.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        alias = str(err["loc"][0]) if err["loc"] else "?"
        name = FIELDS_BY_ALIAS.get(alias, alias)
        info = StackSettings.model_fields.get(name)
        accepted = (info.description if info else None) or err["msg"]
        raise _invalid(stack, alias, raw.get(alias, err.get("input")), accepted) from None
    _check_combinations(stack, settings, secrets)
    return settings


def _check_combinations(stack: str, s: StackSettings, secrets: set[str] | frozenset[str]) -> None:
    def fail(key: str, value: object, problem: str) -> ConfigError:
        return _combination(stack, key, value, problem)

    if s.registry_password and "registryPassword" not in secrets:
        raise fail("registryPassword", "<redacted>", "is plain text; set it with "
                   "`pulumi config set --secret qaic-k8s:registryPassword`")
    if s.push and not s.registry:
        raise fail("push", "true", "needs 'qaic-k8s:registry' (where to push)")
    if s.load_image and s.push:
        raise fail("loadImage", "true", "conflicts with 'qaic-k8s:push' (build for the host "
                   "and load locally, or build every platform and push)")
    if s.image_ref and (s.push or s.load_image):
        key = "push" if s.push else "loadImage"
        raise fail(key, "true",
                   "conflicts with 'qaic-k8s:imageRef' (a pinned image skips the build)")
    if bool(s.registry_username) != bool(s.registry_password):
        key = "registryUsername" if s.registry_username else "registryPassword"
        value = s.registry_username or "<redacted>"
        other = "registryPassword" if s.registry_username else "registryUsername"
        raise fail(key, value, f"needs {_key(other)} as well")
    if s.registry_username and not s.registry:
        raise fail("registryUsername", s.registry_username, "needs 'qaic-k8s:registry'")
    if s.create_pull_secret and not s.registry_username:
        raise fail("createPullSecret", "true",
                   "needs 'qaic-k8s:registryUsername' and 'qaic-k8s:registryPassword'")
    if s.ultra_one_card_namespaces and not s.one_card_rule:
        raise fail("ultraOneCardNamespaces", list(s.ultra_one_card_namespaces), "has no effect "
                   "unless 'qaic-k8s:allocationApi' is 'dra', 'qaic-k8s:skuBasedResources' is "
                   "true and 'qaic-k8s:ultraOneCard' is true")
    if s.sku_overrides and not (s.sku_based_resources or s.dra):
        raise fail("skuOverrides", list(s.sku_overrides), "has no effect unless "
                   "'qaic-k8s:skuBasedResources' is true or 'qaic-k8s:allocationApi' is 'dra'")
    if s.workload_ultra_job and s.allowed_device_shares > 1 and not s.dra:
        raise fail("workloadUltraJob", "true",
                   "needs 'qaic-k8s:allowedDeviceShares' = 1 in device-plugin mode (shares "
                   "turn topology-aware allocation off, so 4 SoCs of one Ultra card cannot be "
                   "guaranteed; DRA mode's claim can)")
    if s.workload_monitor and not s.dra:
        raise fail("workloadMonitor", "true", "needs 'qaic-k8s:allocationApi' = 'dra' "
                   "(device plugins have no admin access: a pod holding every SoC would "
                   "leave none for anybody else)")
    if s.workload_monitor and s.monitor_namespace == s.workload_namespace:
        raise fail("monitorNamespace", s.monitor_namespace, "must differ from "
                   "'qaic-k8s:workloadNamespace' (the admin-access label would let every "
                   "sample claim any SoC in use)")
    if s.any_workload and not s.workload_image:
        raise fail("workloadImage", "", "is not allowed when a sample workload is enabled")
    if s.render_mode and s.kube_context:
        raise fail("kubeContext", s.kube_context, "conflicts with 'qaic-k8s:renderYamlDir' "
                   "(rendering never talks to a cluster)")
    if s.cpu_limit and quantity_value(s.cpu_limit) < quantity_value(s.cpu_request):
        raise fail("cpuLimit", s.cpu_limit, f"is below 'qaic-k8s:cpuRequest' ({s.cpu_request})")
    if quantity_value(s.memory_limit) < quantity_value(s.memory_request):
        raise fail("memoryLimit", s.memory_limit,
                   f"is below 'qaic-k8s:memoryRequest' ({s.memory_request})")


def settings_from_pulumi() -> StackSettings:
    """Read and validate the current stack's config (the CLI's or the test's)."""
    return load_settings(pulumi.get_stack(), raw_config(pulumi.get_project()), secret_keys())
